"""Import open_clip on a CPU-only torch.

PyPI's torchvision wheels are CUDA builds: beside the CPU torch their compiled ops
library cannot load, and torchvision's import then fails in its meta registrations
with ``operator torchvision::nms does not exist``. open_clip needs only
torchvision's pure-Python transforms, so when (and only when) the import fails for
that reason we declare the two operator schemas torchvision registers fake kernels
for, and import again. A real, working torchvision build is left untouched.
"""
from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

_MISSING_OPS_MESSAGE = "operator torchvision::nms does not exist"
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_fragment = None


def _declare_torchvision_schemas() -> None:
    global _fragment
    import torch

    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS.values():
        _fragment.define(schema)


def import_torchvision() -> ModuleType:
    """Import torchvision, declaring missing operator schemas for a CUDA wheel on CPU torch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module("torchvision")
        except RuntimeError as error:
            if _MISSING_OPS_MESSAGE not in str(error):
                raise
            for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[name]
            _declare_torchvision_schemas()
            return importlib.import_module("torchvision")


def import_open_clip() -> ModuleType:
    """Import open_clip after making sure torchvision imports."""
    import_torchvision()
    return importlib.import_module("open_clip")
