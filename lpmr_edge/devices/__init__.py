"""Devices that run exported artifacts through the device server (``serve.py``): ``kinds.parse_device`` makes
one from a ``--device`` spec."""
