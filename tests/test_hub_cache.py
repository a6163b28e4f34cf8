"""Real-weights loading without network: a warm Hugging Face cache (hub layout) serves ``ARCH:TAG`` and
``hf-hub:ORG/NAME`` specs under HF_HUB_OFFLINE=1, and HF ``CLIPModel`` checkpoints load by conversion."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lpmr_edge.errors import UserError
from lpmr_edge.models import load_model
from lpmr_edge.models.bundled import CONFIG_DIR

REPOSITORY = "lpmr-test/tiny-seeded"
ARCHITECTURE = "lpmr-tiny-fmnist"


def seeded_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The model's tensors replaced by seeded normal values (so a load that ignores the file is caught)."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(tensor.shape, generator=generator) if tensor.is_floating_point() else tensor.clone()
            for name, tensor in model.state_dict().items()}


def write_hub_repository(cache: Path, repository: str, files: dict[str, bytes]) -> None:
    """A repository in huggingface_hub's cache layout: blobs by sha256, a snapshot of symlinks, refs/main."""
    root = cache / f"models--{repository.replace('/', '--')}"
    revision = hashlib.sha1(repository.encode()).hexdigest()
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    for name, content in files.items():
        blob = root / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / name).symlink_to(blob)


def safetensors_bytes(state: dict[str, torch.Tensor], path: Path) -> bytes:
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(path))
    return path.read_bytes()


@pytest.fixture
def warm_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_random) -> tuple[Path, dict[str, torch.Tensor]]:
    """A Hugging Face cache holding an open_clip repository of the stand-in architecture with seeded weights,
    with the hub switched offline (any download attempt fails)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    state = seeded_state(tiny_random.model, seed=7)
    config = {"model_cfg": json.loads((CONFIG_DIR / f"{ARCHITECTURE}.json").read_text()),
              "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    write_hub_repository(cache, REPOSITORY, {
        "open_clip_config.json": json.dumps(config).encode(),
        "open_clip_model.safetensors": safetensors_bytes(state, tmp_path / "weights.safetensors")})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache, state


def assert_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state.items())


def test_hf_hub_spec_loads_config_and_weights_from_the_cache_offline(warm_cache):
    _, state = warm_cache
    clip = load_model(f"hf-hub:{REPOSITORY}")
    assert clip.kind == "pretrained" and clip.architecture == f"hf-hub:{REPOSITORY}"
    assert_weights(clip.model, state)
    assert clip.describe()["preprocess"]["mean"] == [0.5, 0.5, 0.5]  # the repository's preprocess config
    assert clip.tokenize(["a coat"]).shape == (1, 77)


def test_architecture_tag_resolves_through_open_clip_to_the_cached_repository(warm_cache, monkeypatch):
    _, state = warm_cache
    from open_clip import pretrained

    monkeypatch.setitem(pretrained._PRETRAINED, ARCHITECTURE, {"seeded": {"url": "", "hf_hub": f"{REPOSITORY}/"}})
    clip = load_model(f"{ARCHITECTURE}:seeded")
    assert clip.kind == "pretrained"
    assert_weights(clip.model, state)


def test_uncached_repository_offline_is_a_one_line_error(warm_cache):
    with pytest.raises(UserError, match="not in the local") as error:
        load_model("hf-hub:lpmr-test/not-cached")
    assert "\n" not in str(error.value)


# transformers' CLIPModel names for one transformer layer, and the whole model around the layers
HF_LAYER = {"self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.q_proj": "q",
            "self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
            "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
HF_TOWERS = {"text_model": ("", "text_model.encoder.layers"), "vision_model": ("visual.", "vision_model.encoder.layers")}


def to_hf_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The stand-in's open_clip state dict written under HF ``CLIPModel`` names, as transformers saves it."""
    hf = {"logit_scale": state["logit_scale"],
          "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
          "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
          "text_model.embeddings.position_ids": torch.arange(77).unsqueeze(0),
          "text_model.final_layer_norm.weight": state["ln_final.weight"],
          "text_model.final_layer_norm.bias": state["ln_final.bias"],
          "text_projection.weight": state["text_projection"].t(),
          "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
          "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
          "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
          "vision_model.embeddings.position_ids": torch.arange(17).unsqueeze(0),
          "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
          "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
          "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
          "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
          "visual_projection.weight": state["visual.proj"].t()}
    for prefix, layers in HF_TOWERS.values():
        for layer in range(len({name.split(".")[2 + bool(prefix)] for name in state
                                if name.startswith(f"{prefix}transformer.resblocks.")})):
            ours = f"{prefix}transformer.resblocks.{layer}"
            for hf_part, our_part in HF_LAYER.items():
                for kind in ("weight", "bias"):
                    if our_part in "qkv":
                        width = state[f"{ours}.attn.in_proj_{kind}"].shape[0] // 3
                        tensor = state[f"{ours}.attn.in_proj_{kind}"][width * "qkv".index(our_part):][:width]
                    else:
                        tensor = state[f"{ours}.{our_part}.{kind}"]
                    hf[f"{layers}.{layer}.{hf_part}.{kind}"] = tensor
    return hf


def write_hf_checkpoint(directory: Path, state: dict[str, torch.Tensor], hidden_act: str) -> Path:
    directory.mkdir()
    config = {"architectures": ["CLIPModel"], "model_type": "clip",
              "text_config": {"hidden_act": hidden_act}, "vision_config": {"hidden_act": hidden_act}}
    (directory / "config.json").write_text(json.dumps(config))
    path = directory / "model.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in to_hf_clip(state).items()}, str(path))
    return path


def test_hf_clipmodel_checkpoint_loads_with_open_clip_names(tmp_path: Path, tiny_random):
    state = seeded_state(tiny_random.model, seed=11)
    path = write_hf_checkpoint(tmp_path / "hf", state, hidden_act="gelu")
    clip = load_model(f"{ARCHITECTURE}:{path}")
    assert clip.kind == "checkpoint"
    assert_weights(clip.model, state)
    images = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert clip.image_tower()(images).shape == (2, 64)


def test_hf_checkpoint_with_another_activation_names_the_architecture_to_use(tmp_path: Path, tiny_random):
    path = write_hf_checkpoint(tmp_path / "hf", seeded_state(tiny_random.model, seed=11), hidden_act="quick_gelu")
    with pytest.raises(UserError, match="use the architecture lpmr-tiny-fmnist-quickgelu"):
        load_model(f"{ARCHITECTURE}:{path}")

