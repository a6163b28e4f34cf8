"""`make test`'s pytest-xdist workers: modules that use a machine-wide resource run in one worker group."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import SHARED_RESOURCE, worker_group

TESTS = Path(__file__).parent
USES = {"arm64-root": re.compile(r"\bEmulatedArm64\(\)|\bemulator: EmulatedArm64\b")}  # the root, or its fixture


def test_every_module_using_a_machine_wide_resource_is_in_its_group():
    modules = sorted(path for path in TESTS.glob("test_*.py") if path.name != Path(__file__).name)
    users = {resource: {path.stem for path in modules if use.search(path.read_text())} for resource, use in USES.items()}
    assert len(users["arm64-root"]) >= 4, users
    for resource, names in users.items():
        assert {worker_group(f"tests/{name}.py::test_a") for name in names} == {resource}
    assert set(SHARED_RESOURCE) == set().union(*users.values()), "a module in SHARED_RESOURCE no longer uses it"


def test_any_other_module_is_a_group_of_its_own():
    assert worker_group("tests/test_stats.py::test_a[1-2]") == worker_group("tests/test_stats.py::test_b") == \
        "tests/test_stats.py"
    assert worker_group("tests/test_tune.py::test_a") == "tests/test_tune.py"  # its Ray cluster stops only itself
