"""The emulated arm64 device (``emu-arm64``): the Debian arm64 root of ``EmulatedArm64`` under QEMU.

Correctness only: outputs are a real aarch64 CPU's arithmetic, timings are emulated and never latencies
(``"emulated": true`` in the description and in every timing). The device server runs in the root's
venv, in private mount and pid namespaces, so nothing it starts outlives the session.
"""
from __future__ import annotations

from typing import Any

from lpmr_edge.devices.base import Device
from lpmr_edge.devices.emulated import GUEST_HOME, EmulatedArm64, guest_environment
from lpmr_edge.errors import UserError

EMULATED_ARM64 = "emu-arm64"


class EmulatedDevice(Device):
    """``EmulatedArm64`` as a device: commands run chrooted in its root through its QEMU."""

    kind = EMULATED_ARM64
    emulated = True
    options = ("workdir", "cpu", "runner")

    def __init__(self, workdir: str | None = None, cpu: str | None = None, runner: str | None = None) -> None:
        super().__init__(workdir=workdir, python=EmulatedArm64.python, runner=runner)
        self.emulator = EmulatedArm64(cpu=cpu)

    @property
    def label(self) -> str:
        return EMULATED_ARM64

    def prepare(self) -> None:
        self.emulator.ensure_built()

    def describe(self) -> dict[str, Any]:
        return {**self.emulator.describe(), **super().describe()}

    def setup_hint(self) -> str:
        return "build the emulated root with `make arm-root` (as root)"

    def command(self, argv: list[str]) -> list[str]:
        """The interactive counterpart of ``EmulatedArm64.run``: the same namespaces, chroot and QEMU."""
        if not self.emulator.available():
            raise UserError(f"no usable emulated arm64 root at {self.emulator.root} (needs root); {self.setup_hint()}")
        return self.emulator.command([GUEST_HOME + arg[1:] if arg.startswith("~/") else arg for arg in argv])

    def environment(self) -> dict[str, str]:
        return guest_environment()
