"""Shared fixtures: an isolated cache, and models loaded once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Fixtures that export real artifacts (or run a pipeline or sweep that does): every test using one is `slow`.
EXPORTING_FIXTURES = frozenset({"artifacts", "openvino_artifact", "openvino_int8w_artifact",
                                "executorch_artifact", "int8_cache", "local_result", "plan_files", "workspace",
                                "killed_and_resumed"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` every test that exports real artifacts through one of ``EXPORTING_FIXTURES``."""
    for item in items:
        if EXPORTING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own lpmr-edge cache directory."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("LPMR_EDGE_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def tiny_random():
    """The stand-in architecture with seeded random weights."""
    from lpmr_edge.models import load_model

    return load_model("random:lpmr-tiny-fmnist")


@pytest.fixture(scope="session")
def standin():
    """The bundled, trained stand-in."""
    from lpmr_edge.models import load_model

    return load_model("lpmr-tiny-fmnist")


def target_toml(name: str, description: str, arch: str, threads: int, batch: int,
                precisions: dict[str, list[str]]) -> str:
    """A small target file: ``precisions`` per runtime, one batch size for both towers."""
    lines = [f"name = {name!r}", f"description = {description!r}", f"arch = {arch!r}", f"threads = {threads}",
             f"image_batch = {batch}", f"text_batch = {batch}"]
    for runtime, listed in precisions.items():
        lines += ["", f"[runtimes.{runtime}]", f"precisions = {listed!r}"]
    return "\n".join(lines) + "\n"
