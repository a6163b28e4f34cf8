"""Turn a model spec into a loaded CLIP: towers, tokenizer, preprocessing and logit scale.

Specs:
  ``lpmr-tiny-fmnist``            a bundled stand-in (trained by us, not a pretrained CLIP)
  ``random:ARCH``                 an open_clip architecture with seeded random weights
  ``ARCH:TAG``                    open_clip pretrained weights (needs network or a warm cache)
  ``hf-hub:ORG/NAME``             an open_clip model repository on the Hugging Face hub (config and weights)
  ``ARCH:/path/to/weights``       a local safetensors file or weights-only torch state dict, in open_clip's
                                  names or in Hugging Face ``CLIPModel``'s (converted on load)

Hub files are read from the Hugging Face cache first (``HF_HUB_CACHE``/``HF_HOME``) without network; only
files missing from it are downloaded, and ``HF_HUB_OFFLINE=1`` forbids that.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import pickle
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from lpmr_edge._compat import import_open_clip
from lpmr_edge.errors import UserError
from lpmr_edge.models.bundled import BUNDLED_MODELS, CONFIG_DIR
from lpmr_edge.models.hf_clip import check_activation, hf_clip_to_open_clip, is_hf_clip
from lpmr_edge.models.preprocess import PilPreprocess

Result = TypeVar("Result")

RANDOM_SEED = 0
HF_HUB_PREFIX = "hf-hub:"
HF_EXTRA = "pip install 'lpmr-edge[hf]'"
SIMPLE_TOKENIZER_VOCAB = 49408  # token ids open_clip's SimpleTokenizer emits (its BPE vocabulary ships in the wheel)
SCORING_PROBABILITIES = ("softmax over the zero-shot logits logit_scale * cosine + logit_bias; the bias is the same "
                         "for every class, so it cancels and the probabilities are softmax(logit_scale * cosine)")
KIND_LABELS = {
    "bundled": "stand-in trained by lpmr-edge, not a pretrained CLIP",
    "random": "random weights, not a trained model",
    "pretrained": "open_clip pretrained weights",
    "checkpoint": "local checkpoint",
}


@dataclass
class ClipModel:
    """A loaded CLIP-style model and everything needed to run it zero-shot."""

    spec: str
    kind: str
    architecture: str
    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess: Callable[[Any], torch.Tensor]
    image_size: int
    context_length: int
    embed_dim: int
    logit_scale: float
    weights_sha256: str
    logit_bias: float | None = None  # SigLIP-family models: logits = logit_scale * cosine + logit_bias

    @property
    def label(self) -> str:
        """Human-readable provenance, shown in every output."""
        return KIND_LABELS[self.kind]

    def describe(self) -> dict[str, Any]:
        """Manifest entry for this model."""
        return {"spec": self.spec, "kind": self.kind, "label": self.label, "architecture": self.architecture,
                "weights_sha256": self.weights_sha256, "image_size": self.image_size,
                "context_length": self.context_length, "embed_dim": self.embed_dim,
                "logit_scale": self.logit_scale, "logit_bias": self.logit_bias, "scoring": self.scoring(),
                "preprocess": _jsonable(self.model.visual.preprocess_cfg)}

    def scoring(self) -> dict[str, Any]:
        """How the model scores an image against a text, and how the suite turns its logits into class
        probabilities. SigLIP-family models (with a ``logit_bias``) are trained with a sigmoid per pair; their
        per-class sigmoids are independent match probabilities that need not sum to 1, so for accuracy and
        calibration the suite uses the softmax over the same logits, as for CLIP (for the strongly negative
        SigLIP bias, sigmoid(z) ~ exp(z), so normalised sigmoids approach this softmax anyway)."""
        sigmoid = self.logit_bias is not None
        return {"model": "sigmoid(logit_scale * cosine + logit_bias)" if sigmoid else
                "softmax(logit_scale * cosine) over the texts",
                "family": "sigmoid (SigLIP)" if sigmoid else "softmax (CLIP)",
                "class_probabilities": SCORING_PROBABILITIES}

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """Token ids ``[len(texts), context_length]`` as int64."""
        return self.tokenizer(texts).numpy().astype(np.int64)

    def image_tower(self) -> torch.nn.Module:
        """Module mapping ``[B,3,H,W]`` float images to unnormalised image features."""
        return _Tower(self.model, "image")

    def text_tower(self) -> torch.nn.Module:
        """Module mapping ``[B,context_length]`` int64 tokens to unnormalised text features."""
        return _Tower(self.model, "text")


class _Tower(torch.nn.Module):
    def __init__(self, clip: torch.nn.Module, which: str) -> None:
        super().__init__()
        self.clip = clip
        self.which = which

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.which == "image":
            return self.clip.encode_image(inputs)
        return self.clip.encode_text(inputs)


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in config.items()}


def build_preprocess(model_info: Mapping[str, Any]) -> Callable[[Any], np.ndarray | torch.Tensor]:
    """The eval image transform recorded in a model's manifest entry (no weights needed): ``PilPreprocess``
    (PIL and numpy, bit-identical to open_clip's), or open_clip's own transform for a config it does not
    reproduce."""
    config = model_info["preprocess"]
    reproduced = PilPreprocess.from_config(config)
    if reproduced is not None:
        return reproduced
    import_open_clip()
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**{key: tuple(value) if isinstance(value, list) else value
                                               for key, value in config.items()}), is_train=False)


def build_tokenizer(model_info: Mapping[str, Any]) -> Callable[[list[str]], np.ndarray]:
    """The tokenizer of a model's architecture (no weights needed), returning int64 arrays. open_clip is
    imported at the first call, so an evaluation whose text embeddings are all cached never imports it."""
    @functools.cache
    def tokenizer() -> Callable[[list[str]], torch.Tensor]:
        open_clip = import_open_clip()
        _register_bundled_configs(open_clip)
        return make_tokenizer(open_clip, model_info["architecture"], model_info.get("kind", "random"))

    return lambda texts: tokenizer()(texts).numpy().astype(np.int64)


def _text_config(open_clip: Any, architecture: str) -> dict[str, Any]:
    if architecture.startswith(HF_HUB_PREFIX):
        config = _cache_first(lambda: open_clip.get_model_config(architecture), _hub_unreachable(architecture))
    else:
        config = open_clip.get_model_config(architecture)
    return (config or {}).get("text_cfg", {})


def _needs_transformers(what: str, architecture: str) -> UserError | None:
    if importlib.util.find_spec("transformers") is not None:
        return None
    return UserError(f"{architecture}'s {what} needs the Hugging Face `transformers` package, which is not "
                     f"installed; install it with {HF_EXTRA} (its files then come from the Hugging Face hub)")


def make_tokenizer(open_clip: Any, architecture: str, kind: str) -> Callable[[list[str]], torch.Tensor]:
    """The architecture's tokenizer. An architecture with a Hugging Face tokenizer needs `transformers` and
    the hub, except with random weights (``kind == "random"``): there open_clip's SimpleTokenizer, which needs
    no download, stands in at the architecture's context length when its ids fit the text vocabulary."""
    text_config = _text_config(open_clip, architecture)
    if "hf_tokenizer_name" in text_config:
        if kind == "random" and text_config.get("vocab_size", 0) >= SIMPLE_TOKENIZER_VOCAB:
            return open_clip.SimpleTokenizer(context_length=text_config.get("context_length", 77))
        missing = _needs_transformers("tokenizer", architecture)
        if missing is not None:
            raise missing
    elif not architecture.startswith(HF_HUB_PREFIX):
        return open_clip.get_tokenizer(architecture)
    return _cache_first(lambda: open_clip.get_tokenizer(architecture), _hub_unreachable(f"{architecture}'s tokenizer"))


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's tensors (names, dtypes, shapes and bytes) in sorted order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _register_bundled_configs(open_clip: Any) -> None:
    if not set(BUNDLED_MODELS) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a weights-only torch checkpoint; never unpickle arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise UserError(f"{path} is not a readable safetensors file ({error})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} is not a weights-only state dict ({first_line}); save it with "
                        "torch.save(model.state_dict(), path) or as safetensors") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not (isinstance(loaded, Mapping) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values())):
        raise UserError(f"{path} does not hold a state dict (a mapping of names to tensors); save it with "
                        "torch.save(model.state_dict(), path)")
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def _load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    if is_hf_clip(state_dict):
        state_dict = hf_clip_to_open_clip(state_dict)
    result = model.load_state_dict(state_dict, strict=False)
    problems = [*result.missing_keys, *result.unexpected_keys]
    if problems:
        raise UserError(f"{source} does not fit this architecture ({len(result.missing_keys)} missing, "
                        f"{len(result.unexpected_keys)} unexpected keys, e.g. {problems[0]}); "
                        "check the architecture name in the spec")


def split_spec(spec: str) -> tuple[str, str, str]:
    """Return (kind, architecture, source) for a spec string (syntax only: nothing is loaded)."""
    if spec in BUNDLED_MODELS:
        return "bundled", BUNDLED_MODELS[spec].architecture, spec
    if spec.startswith("random:") and spec.removeprefix("random:"):
        return "random", spec.removeprefix("random:"), ""
    if spec.startswith(HF_HUB_PREFIX):
        repository = spec.removeprefix(HF_HUB_PREFIX)
        if repository.count("/") == 1 and all(repository.split("/")):
            return "pretrained", spec, repository
    if ":" in spec and all(spec.split(":", 1)):
        architecture, source = spec.split(":", 1)
        kind = "checkpoint" if ("/" in source or Path(source).suffix) else "pretrained"
        return kind, architecture, source
    raise UserError(f"model spec '{spec}' is incomplete: use ARCH:TAG (e.g. ViT-B-32:laion2b_s34b_b79k), "
                    f"hf-hub:ORG/NAME, ARCH:/path/to/weights.safetensors, random:ARCH or one of "
                    f"{sorted(BUNDLED_MODELS)}")


def _check_architecture(open_clip: Any, architecture: str, spec: str) -> None:
    """A UserError, before anything is built, for an unknown architecture or one whose text tower needs
    an optional package that is missing."""
    if not architecture.startswith(HF_HUB_PREFIX) and architecture not in open_clip.list_models():
        raise UserError(f"unknown open_clip architecture '{architecture}' in '{spec}'; "
                        "run `lpmr-edge models` to list them")
    if "hf_model_name" in _text_config(open_clip, architecture):
        missing = _needs_transformers("text tower", architecture)
        if missing is not None:
            raise missing


def _create(open_clip: Any, architecture: str, **kwargs: Any) -> tuple[torch.nn.Module, Any]:
    model, _, preprocess = open_clip.create_model_and_transforms(architecture, **kwargs)
    return model, preprocess


def _cache_first(action: Callable[[], Result], failure: Callable[[str], UserError]) -> Result:
    """Run a hub-reading action against the local Hugging Face cache first, then (if that fails and
    HF_HUB_OFFLINE is not set) with network; ``failure(reason)`` is raised when both fail."""
    for offline in (True, False):
        with _hub_offline(offline):
            try:
                return action()
            except UserError:
                raise
            except Exception as error:  # noqa: BLE001 — open_clip/HF raise RuntimeError, OSError and HF errors offline
                reason = type(error).__name__
    raise failure(reason)


def _hub_unreachable(what: str) -> Callable[[str], UserError]:
    return lambda reason: UserError(
        f"{what} is not in the local Hugging Face cache and could not be downloaded ({reason}); fetch it where "
        "there is network into the Hugging Face cache (HF_HUB_CACHE), or pass a local checkpoint file")


def _create_pretrained(open_clip: Any, architecture: str, tag: str | None) -> tuple[torch.nn.Module, Any]:
    """Load pretrained weights (a tag, or a hub repository's own with ``tag=None``) from the cache first."""
    def failure(reason: str) -> UserError:
        return UserError(f"pretrained weights '{tag or architecture}' for {architecture} are not in the local "
                         f"cache and could not be downloaded ({reason}); fetch them where there is network into "
                         f"the Hugging Face cache, or pass a local file as ARCH:/path/to/weights.safetensors")

    return _cache_first(lambda: _create(open_clip, architecture, pretrained=tag), failure)


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Force huggingface_hub's offline switch (read once at its import) for the duration."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline or previous
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def load_model(spec: str) -> ClipModel:
    """Load a CLIP model from a spec (see module docstring) in eval mode, FP32, on CPU."""
    open_clip = import_open_clip()
    _register_bundled_configs(open_clip)
    kind, architecture, source = split_spec(spec)
    _check_architecture(open_clip, architecture, spec)
    tokenizer = make_tokenizer(open_clip, architecture, kind)
    if kind == "pretrained":  # a hub repository (architecture "hf-hub:ORG/NAME") brings its own weights: no tag
        tag = None if architecture.startswith(HF_HUB_PREFIX) else source
        model, preprocess = _create_pretrained(open_clip, architecture, tag)
    else:
        torch.manual_seed(RANDOM_SEED)
        options = {f"image_{key}": value for key, value in BUNDLED_MODELS[source].preprocess.items()} \
            if kind == "bundled" else {}
        model, preprocess = _create(open_clip, architecture, **options)
        if kind == "bundled":
            weights = BUNDLED_MODELS[source].weights_path
            if not weights.is_file():
                raise UserError(f"bundled weights missing: {weights}; run `make standin` to train them")
            _load_weights(model, read_state_dict(weights), str(weights))
        elif kind == "checkpoint":
            state_dict = read_state_dict(Path(source))
            if is_hf_clip(state_dict):
                check_activation(Path(source), model, architecture)
            _load_weights(model, state_dict, source)
    model.eval()
    image_size = model.visual.image_size
    return ClipModel(
        spec=spec, kind=kind, architecture=architecture, model=model, tokenizer=tokenizer,
        preprocess=preprocess,
        image_size=int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size),
        context_length=int(getattr(tokenizer, "context_length", 77)),
        embed_dim=int(model.text_projection.shape[1] if hasattr(model, "text_projection") else 0),
        logit_scale=float(model.logit_scale.detach().exp()),
        weights_sha256=state_dict_sha256(model),
        logit_bias=float(model.logit_bias.detach()) if getattr(model, "logit_bias", None) is not None else None,
    )
