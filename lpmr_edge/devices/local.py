"""This machine as a device: the device server runs in a subprocess (``local?python=PATH``)."""
from __future__ import annotations

import os
import sys

from lpmr_edge.devices.base import LOCAL, Device


class LocalDevice(Device):
    """Runs device commands as subprocesses of this process; its default Python is this one."""

    kind = LOCAL

    @property
    def default_python(self) -> str:
        return sys.executable

    @property
    def label(self) -> str:
        return LOCAL

    def command(self, argv: list[str]) -> list[str]:
        return [os.path.expanduser(arg) for arg in argv]
