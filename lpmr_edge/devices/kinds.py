"""The device kinds a ``--device`` spec can name: a URL scheme (``ssh://``) or a bare name (``local``,
``emu-arm64``) to its ``Device`` class. Adding a device kind = a ``Device`` subclass (its ``options``, and
``from_spec`` if the spec carries more than options) plus one line here; ``devices.base`` stays unchanged."""
from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from lpmr_edge.devices.base import LOCAL, Device
from lpmr_edge.devices.emu import EMULATED_ARM64
from lpmr_edge.errors import UserError

DEVICE_KINDS = {
    LOCAL: "lpmr_edge.devices.local:LocalDevice",
    "ssh://": "lpmr_edge.devices.ssh:SshDevice",
    EMULATED_ARM64: "lpmr_edge.devices.emu:EmulatedDevice",
}
KIND_USAGE = f"{LOCAL}, ssh://user@host[:port] or {EMULATED_ARM64}"


def parse_device(spec: str) -> Device:
    """The device a ``--device`` spec names (see lpmr_edge/devices/base.py); a UserError for a bad spec."""
    parts = urlsplit(spec)
    kind = f"{parts.scheme}://" if parts.scheme else parts.path
    if kind not in DEVICE_KINDS:
        raise UserError(f"unknown device '{spec}'; use {KIND_USAGE}")
    module, name = DEVICE_KINDS[kind].split(":")
    device = getattr(importlib.import_module(module), name).from_spec(spec, parts)
    device.spec = spec
    return device
