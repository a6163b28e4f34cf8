"""The pinned install: CPU torch only, and open_clip importable beside PyPI's torchvision."""
from importlib import metadata

import torch


def test_torch_is_the_cpu_build_and_no_cuda_packages_are_installed():
    assert torch.version.cuda is None
    assert "+cpu" in torch.__version__
    cuda_packages = [d.metadata["Name"] for d in metadata.distributions()
                     if d.metadata["Name"].lower().startswith(("nvidia-", "triton"))]
    assert cuda_packages == []


def test_open_clip_imports_through_the_torchvision_shim():
    from lpmr_edge._compat import import_open_clip, import_torchvision

    torchvision = import_torchvision()
    assert torchvision.__version__.startswith("0.28")
    open_clip = import_open_clip()
    assert "ViT-B-32" in open_clip.list_models()
    from torchvision.transforms import Normalize  # the part open_clip needs

    assert Normalize(mean=[0.5], std=[0.5]) is not None
