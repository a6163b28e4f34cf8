"""`lpmr-edge doctor`: CPU features from /proc/cpuinfo, the Makefile's system needs, the JSON report."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lpmr_edge import doctor
from lpmr_edge.cli import main

X86 = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx512f avx512_vnni avx512_bf16\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm sve\nCPU part\t: 0xd40\n"


def test_cpu_features_are_read_from_x86_flags_and_arm_features():
    assert {name for name, present in doctor.cpu_features(X86).items() if present} == {"AVX-512 VNNI", "AVX-512 BF16"}
    assert {name for name, present in doctor.cpu_features(ARM).items() if present} == {"NEON dot-product", "i8mm"}
    assert doctor.cpu_model(X86) == "AMD EPYC 9R14" and doctor.cpu_model(ARM) == "0xd40"


def test_system_needs_are_the_makefiles():
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) := (/\S+)$", makefile, flags=re.MULTILINE))
    assert {str(path) for path in doctor.SYSTEM_NEEDS.values()} == \
        {variables["FMNIST"], variables["CHROMIUM"], variables["SSHD"]}


def test_doctor_json_reports_and_lists_what_make_test_would_install(tmp_path: Path, capsys,
                                                                    monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LPMR_EDGE_ARM_ROOT", str(tmp_path / "no-root"))
    monkeypatch.setenv("LPMR_EDGE_LOG", str(tmp_path / "log"))
    (tmp_path / "Makefile").write_text("")
    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert exited.value.code == 0
    assert report["python"]["supported"] and report["packages"]["torch"].startswith("2.13.0")
    assert report["openvino_default_precision"] in ("f32", "bf16", "f16")
    assert report["emulated_arm64_root"] == {"path": str(tmp_path / "no-root"), "ready": False}
    would = report["make_test_would_install"]
    assert would[0].startswith("the project virtualenv") and any("arm64 root" in item for item in would)


def test_doctor_lists_the_native_runner_compilers_and_a_missing_cross_compiler(monkeypatch: pytest.MonkeyPatch):
    import shutil

    found = shutil.which
    monkeypatch.setattr(doctor.shutil, "which", lambda command, **kw: None if "aarch64" in command
                        else found(command, **kw))
    report = doctor.diagnose()
    assert report["tools"]["native runner compiler for aarch64 (aarch64-linux-gnu-g++)"] is None
    assert report["tools"]["native runner compiler for x86_64 (g++)"] == found("g++")
    if doctor.platform.machine() == "x86_64":  # `make setup` installs the cross compiler on x86_64 hosts only
        assert "g++-aarch64-linux-gnu" in report["make_test_would_install"]
