"""Model specs: bundled, random, checkpoint files, pretrained tags offline."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lpmr_edge._compat import import_open_clip
from lpmr_edge.errors import UserError
from lpmr_edge.models import SIMPLE_TOKENIZER_VOCAB, load_model, make_tokenizer, read_state_dict, split_spec
from lpmr_edge.models.bundled import BUNDLED_MODELS


def test_random_spec_is_seeded_and_labelled(tiny_random):
    again = load_model("random:lpmr-tiny-fmnist")
    assert again.weights_sha256 == tiny_random.weights_sha256
    assert tiny_random.kind == "random" and "random weights" in tiny_random.label
    assert (tiny_random.image_size, tiny_random.context_length, tiny_random.embed_dim) == (28, 77, 64)


def test_towers_produce_features(tiny_random):
    images = torch.zeros(2, 3, 28, 28)
    tokens = torch.from_numpy(tiny_random.tokenize(["a photo of a coat.", "a bag"]))
    with torch.no_grad():
        assert tiny_random.image_tower()(images).shape == (2, 64)
        assert tiny_random.text_tower()(tokens).shape == (2, 64)


def test_bundled_standin_matches_its_published_sha256(standin):
    weights = BUNDLED_MODELS["lpmr-tiny-fmnist"].weights_path
    published = weights.with_suffix(".sha256").read_text().split()[0]
    from lpmr_edge.manifest import sha256_file

    assert sha256_file(weights) == published
    assert standin.kind == "bundled" and "not a pretrained CLIP" in standin.label
    assert weights.stat().st_size <= 15_000_000


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_checkpoint_roundtrip(tmp_path: Path, tiny_random, suffix: str):
    state = {k: v.clone() + 1.0 if v.is_floating_point() else v.clone()
             for k, v in tiny_random.model.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = load_model(f"lpmr-tiny-fmnist:{path}")
    assert loaded.kind == "checkpoint"
    assert torch.equal(loaded.model.state_dict()["logit_scale"], state["logit_scale"])
    assert loaded.weights_sha256 != tiny_random.weights_sha256


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path: Path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"weights": _Evil()}, handle)
    with pytest.raises(UserError, match="not a weights-only state dict"):
        read_state_dict(path)


def test_checkpoint_that_is_not_a_state_dict(tmp_path: Path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(UserError, match="does not hold a state dict"):
        read_state_dict(path)


def test_checkpoint_for_another_architecture(tmp_path: Path):
    path = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(path))
    with pytest.raises(UserError, match="does not fit this architecture"):
        load_model(f"lpmr-tiny-fmnist:{path}")


@pytest.mark.parametrize("spec, message", [
    ("ViT-B-32", "incomplete"),
    ("random:NoSuchNet", "unknown open_clip architecture"),
    ("lpmr-tiny-fmnist:/nonexistent/weights.safetensors", "checkpoint not found"),
])
def test_bad_specs(spec: str, message: str):
    with pytest.raises(UserError, match=message):
        load_model(spec)


@pytest.mark.parametrize("spec", ["", "random:", ":tag", "ViT-B-32:"])
def test_incomplete_specs_fail_on_syntax_alone(spec: str):
    with pytest.raises(UserError, match="incomplete"):
        split_spec(spec)


@pytest.mark.parametrize("spec, message", [
    ("ViT-B-16-SigLIP2:/some/weights.safetensors", "ViT-B-16-SigLIP2's tokenizer needs the Hugging Face"),
    ("nllb-clip-base:/some/weights.safetensors", "nllb-clip-base's text tower needs the Hugging Face"),
    ("random:nllb-clip-base", "nllb-clip-base's text tower needs the Hugging Face"),
])
def test_architectures_needing_transformers_name_the_extra(spec: str, message: str):
    with pytest.raises(UserError, match=message) as error:
        load_model(spec)
    assert "pip install 'lpmr-edge[hf]'" in str(error.value) and "\n" not in str(error.value)


def test_random_weights_use_a_tokenizer_that_needs_no_download():
    open_clip = import_open_clip()
    tokenizer = make_tokenizer(open_clip, "ViT-B-16-SigLIP2", "random")
    tokens = tokenizer(["a photo of a cat", "a dog"])
    assert tokens.shape == (2, 64) and int(tokens.max()) < SIMPLE_TOKENIZER_VOCAB  # SigLIP2: 64 tokens, 256k vocab
    assert make_tokenizer(open_clip, "RN50", "pretrained")(["x"]).shape == (1, 77)


def test_pretrained_tag_without_cache_or_network_is_a_clear_error():
    with pytest.raises(UserError, match="not in the local cache and could not be downloaded"):
        load_model("RN50:openai")


def test_preprocess_recorded_in_describe_rebuilds_the_same_transform(standin):
    from PIL import Image

    from lpmr_edge.models import build_preprocess

    image = Image.fromarray((np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)).convert("RGB")
    rebuilt = build_preprocess(standin.describe())
    assert np.array_equal(rebuilt(image), standin.preprocess(image).numpy())  # PilPreprocess, bit-identical



def test_sigmoid_family_model_records_its_bias_and_scoring(standin):
    sigmoid = load_model("random:lpmr-tiny-sigmoid").describe()  # a reduced SigLIP-style config (init_logit_bias)
    assert sigmoid["logit_bias"] == pytest.approx(-10.0) and sigmoid["scoring"]["family"] == "sigmoid (SigLIP)"
    assert standin.describe()["logit_bias"] is None and standin.describe()["scoring"]["family"] == "softmax (CLIP)"


def test_class_probabilities_from_sigmoid_logits_are_the_softmax_the_bias_cancels_in():
    from scipy.special import expit, softmax

    from lpmr_edge.metrics import classification_outcomes

    rng = np.random.default_rng(0)
    cosine, labels = rng.uniform(-0.2, 0.3, size=(200, 10)), rng.integers(0, 10, 200)
    scale, bias = 118.0, -16.0
    with_bias = classification_outcomes(scale * cosine + bias, labels)
    np.testing.assert_allclose(with_bias["confidence"], softmax(scale * cosine, axis=1).max(1), rtol=1e-6)
    np.testing.assert_array_equal(with_bias["correct"], classification_outcomes(scale * cosine, labels)["correct"])
    logits = 5.0 * cosine - 16.0  # all logits far below 0: normalised sigmoids approach the softmax
    sigmoids = expit(logits)
    np.testing.assert_allclose(sigmoids / sigmoids.sum(1, keepdims=True), softmax(logits, axis=1), rtol=1e-5)
