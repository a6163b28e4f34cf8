"""Commands for devices: ``lpmr-edge device setup`` (``eval --device`` runs the suite on one)."""
from __future__ import annotations

from typing import Annotated

import typer

from lpmr_edge.backends import BACKENDS
from lpmr_edge.cli.app import app
from lpmr_edge.cli.core import DeviceOption, JsonOption
from lpmr_edge.cli.params import EXPORT_RUNTIME, RUNNER
from lpmr_edge.cli.ui import console, print_json, print_table
from lpmr_edge.errors import UserError

RuntimesOption = Annotated[list[str], typer.Option("--runtime", parser=EXPORT_RUNTIME, help="Runtime(s) to install and check: "
                                                   f"{', '.join(BACKENDS)}")]
RunnerOption = Annotated[str | None, typer.Option("--runner", parser=RUNNER, help="Runner kind to set up: native copies ExecuTorch's "
                                                  "C++ runner (no Python on the device) instead of installing a venv")]
device_app = typer.Typer(help="Devices that run artifacts: set them up and check them.", no_args_is_help=True)
app.add_typer(device_app, name="device")


@device_app.command("setup")
def setup_command(
    device: DeviceOption,
    runtime: RuntimesOption = list(BACKENDS),  # noqa: B006 - typer reads, never mutates it
    runner: RunnerOption = None,
    json_output: JsonOption = False,
) -> None:
    """Check a device's Python, architecture, numpy and runtimes; install them into its private venv
    (<workdir>/venv, when no ?python= is given) with pip on the device; with --runner native, copy ExecuTorch's
    native runner there instead."""
    from lpmr_edge.devices.kinds import parse_device
    from lpmr_edge.devices.setup import setup_device

    report = setup_device(parse_device(device), runtime, log=console.print, runner=runner)
    label = report["device"]["label"]
    if json_output:
        print_json(report)
    elif "runners" in report:
        print_table(f"{label}: {report['machine']}, {report['libc']}, {report['free_mb']:.0f} MB free in "
                    f"{report['workdir']}", ["runtime", "runner", "versions", "on device"],
                    [[name, found["kind"], ", ".join(f"{lib} {version}" for lib, version in found["versions"].items()),
                      f"{found['footprint_mb']:.1f} MB in {found['directory']}"]
                     for name, found in report["runners"].items()])
    else:
        print_table(f"{label}: {report['machine']}, Python {report['python_version']} ({report['python']}), "
                    f"{report['libc']}, {report['free_mb']:.0f} MB free in {report['workdir']}",
                    ["package", "version", "status"],
                    [[name, found["version"] or "-", found["problem"] or "ok"]
                     for name, found in report["packages"].items()])
    missing = [name for name, ready in report["ready"].items() if not ready]
    if missing:
        raise UserError(f"device {label} cannot run {', '.join(missing)} yet: fix the problems listed above")
    console.print(f"device {label} is ready for {', '.join(report['ready'])}")
