"""Target files: the shipped ones, user files by path, and clear errors for bad files."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lpmr_edge.backends import ARM_OPENVINO_INT8, BACKENDS
from lpmr_edge.errors import UserError
from lpmr_edge.export import ExportRequest, plan_exports, request_warnings
from lpmr_edge.targets import list_targets, load_target

GOOD = """
name = "pi5"
arch = "aarch64"
threads = 4
image_batch = 1
text_batch = 1
[runtimes.openvino]
precisions = ["fp32"]
"""


def _write(tmp_path: Path, text: str, name: str = "pi5.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_targets_follow_the_contract():
    targets = {target.name: target for target in list_targets()}
    assert {"x86", "arm"} <= set(targets)
    x86, arm = targets["x86"], targets["arm"]
    assert x86.arch == "x86_64" and arm.arch == "aarch64"
    assert x86.runtime("openvino").precisions == BACKENDS["openvino"].precisions
    assert set(arm.runtime("openvino").precisions) == {"fp32", "fp16"}
    assert {"fp32", "int8", "int8-dyn"} <= set(x86.runtime("executorch").precisions)
    assert {"fp32", "int8", "int8-dyn"} <= set(arm.runtime("executorch").precisions)
    assert x86.describe()["batch"] == {"image": x86.image_batch, "text": x86.text_batch}


def test_user_target_by_path_without_code_changes(tmp_path: Path):
    target = load_target(_write(tmp_path, GOOD))
    assert (target.name, target.threads, target.runtime("openvino").precisions) == ("pi5", 4, ("fp32",))
    unnamed = load_target(_write(tmp_path, GOOD.replace('name = "pi5"\n', ""), "edge-box.toml"))
    assert unnamed.name == "edge-box"


@pytest.mark.parametrize(("change", "expected"), [
    (("threads = 4", "threads = 'four'"), "threads must be an integer, got 'four'"),
    (("threads = 4", "threads = true"), "threads must be an integer, got True"),
    (("threads = 4", "threads = 0"), "threads is 0 (use a positive integer)"),
    (("threads = 4", "thread = 4"), "unknown key 'thread'"),
    (('arch = "aarch64"', 'arch = "riscv64"'), "arch is 'riscv64' (use one of x86_64, aarch64)"),
    (("image_batch = 1\n", ""), "missing key 'image_batch'"),
    (('precisions = ["fp32"]', 'precisions = ["fp8"]'), "unknown or repeated entries ['fp8']"),
    (('precisions = ["fp32"]', 'precisions = ["fp32", "fp32"]'), "unknown or repeated entries"),
    (('precisions = ["fp32"]', "precisions = []"), "[runtimes.openvino] precisions is empty"),
    (("[runtimes.openvino]", "[runtimes.tflite]"), "unknown runtime 'tflite'"),
    (('precisions = ["fp32"]', 'precisions = ["fp32"]\noptions = { performance_hint = "FAST" }'),
     "performance_hint' is 'FAST'"),
    (('precisions = ["fp32"]', 'precisions = ["fp32"]\noptions = { inference_precision = { fp32 = "f8" } }'),
     "inference_precision' maps 'fp32' to 'f8'"),
    (('precisions = ["fp32"]', 'precisions = ["fp32"]\noptions = { cpu_pinning = 1 }'),
     "cpu_pinning must be true or false, got 1"),
    (('precisions = ["fp32"]', 'precisions = ["fp32"]\noptions = { streams = 2 }'),
     "unknown key 'streams' in [runtimes.openvino.options]"),
    (('name = "pi5"', 'name = "../up"'), "not usable as a directory name"),
    (('name = "pi5"', 'name = "pi5'), "not valid TOML"),
])
def test_bad_target_files_name_the_key_and_the_fix(tmp_path: Path, change: tuple[str, str], expected: str):
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(UserError) as error:
        load_target(path)
    message = str(error.value)
    assert expected in message and str(path) in message and ";" in message


def test_unknown_target_name_lists_the_available_ones():
    with pytest.raises(UserError, match="unknown target 'moon'.*x86"):
        load_target("moon")
    with pytest.raises(UserError, match="lists no runtime 'executorch'"):
        replace(load_target("arm"), runtimes={}).runtime("executorch")


def test_arm_openvino_int8_is_never_silent():
    arm = load_target("arm")
    requests, notes = plan_exports("random:lpmr-tiny-fmnist", arm, runtimes=["openvino"])
    assert [r.precision for r in requests] == ["fp32", "fp16"]
    assert any(ARM_OPENVINO_INT8 in note for note in notes)
    explicit = ExportRequest(model="random:lpmr-tiny-fmnist", target=arm, runtime="openvino", precision="int8")
    assert request_warnings(explicit) == [ARM_OPENVINO_INT8]
    assert request_warnings(ExportRequest(model="m", target=load_target("x86"), runtime="openvino",
                                          precision="int8")) == []


def test_cli_lists_targets_and_rejects_a_bad_file_in_one_line(tmp_path: Path):
    listed = subprocess.run([sys.executable, "-m", "lpmr_edge", "targets", "--json"], check=False, capture_output=True,
                            text=True)
    assert listed.returncode == 0, listed.stderr
    assert {"x86", "arm"} <= {target["name"] for target in json.loads(listed.stdout)}
    bad = _write(tmp_path, GOOD.replace("threads = 4", "threads = -1"))
    run = subprocess.run([sys.executable, "-m", "lpmr_edge", "export", "--target", str(bad), "--model",
                          "random:lpmr-tiny-fmnist"], check=False, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "threads is -1" in run.stderr
