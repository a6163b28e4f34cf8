"""The PIL+numpy eval transform is bit-identical to open_clip's, and the eval path needs no torchvision."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from lpmr_edge._compat import import_open_clip
from lpmr_edge.models import build_preprocess
from lpmr_edge.models.bundled import BUNDLED_MODELS
from lpmr_edge.models.preprocess import PilPreprocess


def _manifest_config(size, **options) -> dict:
    """A config as a model manifest records it: open_clip's PreprocessCfg with ``options`` merged in."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    merged = merge_preprocess_dict(asdict(PreprocessCfg(size=size)), options)
    return {key: list(value) if isinstance(value, tuple) else value for key, value in merged.items()}


def _project_configs() -> dict[str, dict]:
    open_clip = import_open_clip()

    def pretrained(architecture: str, tag: str, size: int) -> dict:
        return _manifest_config(size, **open_clip.get_pretrained_cfg(architecture, tag))

    return {
        "stand-in": _manifest_config(28, **BUNDLED_MODELS["lpmr-tiny-fmnist"].preprocess),  # shortest, bilinear
        "ViT-B-32": _manifest_config(224),  # random:ViT-B-32: open_clip's defaults (shortest, bicubic)
        "SigLIP": pretrained("ViT-B-16-SigLIP", "webli", 224),  # squash, bicubic
        "MobileCLIP": pretrained("MobileCLIP-S1", "datacompdr", 256),  # shortest, bilinear, mean 0 std 1
        "longest, padded": _manifest_config([192, 160], resize_mode="longest", fill_color=127),
        "shortest, not square": _manifest_config([160, 192], interpolation="bilinear"),
    }


def _image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba = Image.fromarray(pixels, "RGBA")
    return rgba.convert("RGB").quantize(32) if mode == "P" else rgba.convert(mode)


SIZES = [(28, 28), (17, 40), (300, 120), (224, 224), (640, 480), (1, 300)]  # (width, height)
MODES = ["L", "RGB", "RGBA", "P"]


@pytest.mark.parametrize("name", list(_project_configs()))
def test_pil_preprocess_is_bit_identical_to_open_clips_transform(name: str):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    config = _project_configs()[name]
    ours = build_preprocess({"preprocess": config})
    reference = image_transform_v2(PreprocessCfg(**{key: tuple(value) if isinstance(value, list) else value
                                                    for key, value in config.items()}), is_train=False)
    assert isinstance(ours, PilPreprocess)
    for index, (mode, (width, height)) in enumerate((m, s) for m in MODES for s in SIZES):
        image = _image(mode, width, height, index)
        expected, got = reference(image).numpy(), ours(image)
        assert got.dtype == np.float32 and got.shape == expected.shape, (mode, width, height)
        assert np.array_equal(got, expected), (mode, width, height, float(np.abs(got - expected).max()))


def test_configs_it_does_not_reproduce_fall_back_to_open_clip():
    config = _manifest_config(32)
    assert PilPreprocess.from_config({**config, "new_option": 1}) is None
    assert PilPreprocess.from_config({**config, "size": [32]}) is None  # open_clip reads [32] as "shortest edge 32"
    assert PilPreprocess.from_config({**config, "std": [0.5, 0.0, 0.5]}) is None
    fallback = build_preprocess({"preprocess": {**config, "mean": [0.5]}})  # open_clip broadcasts one mean
    assert not isinstance(fallback, PilPreprocess)
    assert fallback(_image("RGB", 40, 40, 0)).shape == (3, 32, 32)


def test_building_the_eval_transform_and_tokenizer_imports_neither_open_clip_nor_torchvision():
    config = json.dumps(_project_configs()["ViT-B-32"])
    script = ("import json, sys\nfrom PIL import Image\nfrom lpmr_edge.models import build_preprocess, build_tokenizer\n"
              f"info = {{'preprocess': json.loads({config!r}), 'architecture': 'ViT-B-32', 'kind': 'random'}}\n"
              "assert build_preprocess(info)(Image.new('RGB', (50, 40))).shape == (3, 224, 224)\n"
              "tokenize = build_tokenizer(info)\n"
              "print(sorted(m for m in ('open_clip', 'torchvision') if m in sys.modules))\n"
              "print(tokenize(['a photo']).shape, sorted(m for m in ('open_clip', 'torchvision') if m in sys.modules))")
    lines = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout.splitlines()
    assert lines == ["[]", "(1, 77) ['open_clip', 'torchvision']"]  # open_clip only once a prompt is tokenized
