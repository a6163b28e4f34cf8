"""lpmr-edge: measure what quantization does to CLIP reliability, through the runtime that ships."""
import logging
import os
import warnings

__version__ = "0.1.0"

QUIET_ENV = "LPMR_EDGE_QUIET"


def quiet_libraries() -> None:
    """Silence the libraries' warnings and info logs in this process and in every process it spawns
    (export and bench workers import this package, which re-applies it there)."""
    os.environ[QUIET_ENV] = "1"
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


if os.environ.get(QUIET_ENV) == "1":
    quiet_libraries()
