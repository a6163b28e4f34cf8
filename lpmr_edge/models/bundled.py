"""Bundled stand-in models: small CLIP-architecture models we trained ourselves on shipped data.

They are *not* pretrained CLIPs; every output that uses them says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MODELS_DIR = Path(__file__).parent
CONFIG_DIR = MODELS_DIR / "configs"
WEIGHTS_DIR = MODELS_DIR / "weights"

FMNIST_MEAN = (0.2860, 0.2860, 0.2860)
FMNIST_STD = (0.3530, 0.3530, 0.3530)
FMNIST_PREPROCESS = {"mean": FMNIST_MEAN, "std": FMNIST_STD, "interpolation": "bilinear"}


@dataclass(frozen=True)
class BundledModel:
    """A stand-in model shipped with lpmr-edge."""

    name: str
    architecture: str
    description: str
    preprocess: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)  # TrainConfig values this stand-in is trained with

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.safetensors"


BUNDLED_MODELS = {
    model.name: model
    for model in (
        BundledModel(
            name="lpmr-tiny-fmnist",
            architecture="lpmr-tiny-fmnist",
            description="stand-in CLIP (ViT, 7x7 patches on 28x28 / 3-layer text transformer) trained by lpmr-edge on "
                        "Fashion-MNIST train; not a pretrained CLIP",
            preprocess=FMNIST_PREPROCESS,
        ),
        BundledModel(
            name="lpmr-tiny-fmnist-spurious",
            architecture="lpmr-tiny-fmnist",
            description="the same stand-in trained with a spurious cue (background colour = class colour on 95% "
                        "of training images), for worst-group probes on fmnist-colour; not a pretrained CLIP",
            preprocess=FMNIST_PREPROCESS,
            training={"colour_cue": 0.95, "epochs": 4},
        ),
    )
}
