"""Where lpmr-edge keeps what it can recompute: text embeddings, calibrations, corrupted images, device
shards, native runner builds."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """lpmr-edge's cache directory: $LPMR_EDGE_CACHE, else ~/.cache/lpmr-edge."""
    return Path(os.environ.get("LPMR_EDGE_CACHE", Path.home() / ".cache" / "lpmr-edge"))
