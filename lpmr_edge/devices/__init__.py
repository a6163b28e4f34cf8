"""Devices that run exported artifacts: each copies files in, runs lpmr_edge/devices/runner.py there,
and copies the results back."""

from lpmr_edge.devices.emulated import EmulatedArm64

__all__ = ["EmulatedArm64"]
