"""`lpmr-edge doctor`: what this machine has for lpmr-edge and what `make test` would still install."""
from __future__ import annotations

from pathlib import Path

from lpmr_edge.cli.app import app
from lpmr_edge.cli.core import JsonOption
from lpmr_edge.cli.ui import console, print_json, print_table


@app.command("doctor")
def doctor_command(json_output: JsonOption = False) -> None:
    """Python, runtime versions, CPU features (VNNI, BF16, AMX, dot-product, i8mm), OpenVINO's default
    precision here, the emulated arm64 root, Chromium, sshd, the native runner's compilers, and what `make test` would still install."""
    from lpmr_edge.doctor import diagnose

    checkout = Path.cwd() if (Path.cwd() / "Makefile").is_file() and (Path.cwd() / "pyproject.toml").is_file() \
        else None
    report = diagnose(checkout)
    if json_output:
        print_json(report)
        return
    python = report["python"]
    cpu = report["cpu"]
    rows = [["Python", f"{python['version']} ({python['executable']})"
             + ("" if python["supported"] else " — not supported: use 3.10 to 3.13")],
            *[[name, version or "not installed"] for name, version in report["packages"].items()],
            ["CPU", f"{cpu['model']} ({cpu['arch']})"],
            ["CPU features", ", ".join(name for name, present in cpu["features"].items() if present) or "none"],
            ["OpenVINO default precision", report["openvino_default_precision"]],
            ["emulated arm64 root", ("ready" if report["emulated_arm64_root"]["ready"] else "not built")
             + f" ({report['emulated_arm64_root']['path']})"],
            *[[tool, path or "not found"] for tool, path in report["tools"].items()]]
    print_table("lpmr-edge doctor", ["what", "found"], rows)
    missing = report["make_test_would_install"]
    console.print("make test would install: " + (", ".join(missing) if missing else "nothing"), highlight=False)
