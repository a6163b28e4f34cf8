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


# Test modules that use a machine-wide resource: on pytest-xdist workers each set runs on one worker, one test
# at a time (the device tests wait for no process to be left in the emulated root).
SHARED_RESOURCE = {"test_emulated_arm64": "arm64-root", "test_emulated_eval": "arm64-root",
                   "test_emulated_run": "arm64-root", "test_native_runner": "arm64-root"}


def worker_group(nodeid: str) -> str:
    """What runs on one xdist worker with the test ``nodeid``: its module, or the modules sharing its resource."""
    module = nodeid.split("::", 1)[0]
    return SHARED_RESOURCE.get(Path(module).stem, module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``make test``'s workers (``pytest -n``) take a ``worker_group`` at a time, so a module's fixtures are
    built once; groups go out in collection order (with ``--no-loadscope-reorder``), slow ones first."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` every test that exports real artifacts through one of ``EXPORTING_FIXTURES``, and order the
    worker groups: the shared resource's (several slow modules) first, then those holding a slow test, then
    the many quick ones, which even out the workers' ends."""
    for item in items:
        if EXPORTING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    slow_groups = {worker_group(item.nodeid) for item in items if item.get_closest_marker("slow")}
    shared = set(SHARED_RESOURCE.values())

    def rank(item: pytest.Item) -> tuple[bool, bool]:
        group = worker_group(item.nodeid)
        return group not in shared, group not in slow_groups

    items.sort(key=rank)  # stable: collection order within a rank


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
