"""Time per image of every ImageNet-C corruption kind at 224x224 on one core, to size the suite's defaults.

    .venv/bin/python scripts/bench_corruptions.py [IMAGES]      # default 20 Fashion-MNIST test images

Per kind, the mean wall time of ``corrupt(...).images.load(i)`` over IMAGES images and severities 1-5: it
includes fitting the 28x28 image to 224x224 and the reference's own work, not the model's preprocessing.
The process is pinned to one core with one thread per library; each kind is warmed up once first (glass
blur's numba compilation is printed apart: it is paid once per process). Figures are printed, never
asserted; the machine is shared, so read them as one measurement.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import sys
import time

import cv2

from lpmr_edge.data import load_dataset
from lpmr_edge.data.corruptions import CORRUPTION_GROUPS, CORRUPTIONS, SEVERITIES, corrupt


def main(images: int) -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)
    dataset = load_dataset("fmnist-test").head(images + 1)
    start = time.perf_counter()
    corrupt(dataset, "glass_blur", 1, seed=0).images.load(images)
    print(f"glass_blur first call (numba compilation, once per process): {time.perf_counter() - start:.1f} s")
    per_kind: dict[str, float] = {}
    for kind in CORRUPTIONS:
        corrupt(dataset, kind, 3, seed=0).images.load(images)  # warm-up on an image not timed
        start = time.perf_counter()
        for severity in SEVERITIES:
            corrupted = corrupt(dataset, kind, severity, seed=0).images
            for index in range(images):
                corrupted.load(index)
        per_kind[kind] = (time.perf_counter() - start) / (images * len(SEVERITIES))
    print(f"\nms per 224x224 image, mean over {images} images x severities 1-5, one core")
    for group, kinds in CORRUPTION_GROUPS.items():
        for kind in kinds:
            print(f"  {group:8s} {kind:18s} {1000 * per_kind[kind]:8.1f}")
    common = [kind for group in ("noise", "blur", "weather", "digital") for kind in CORRUPTION_GROUPS[group]]
    for label, kinds in (("15 ImageNet-C kinds", common), ("all 19 kinds", list(CORRUPTIONS))):
        per_image = sum(per_kind[kind] for kind in kinds) * len(SEVERITIES)
        print(f"{label} x 5 severities: {per_image:.2f} s per image; "
              + ", ".join(f"{n} images {n * per_image / 60:.1f} min" for n in (100, 200, 500, 1000)))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
