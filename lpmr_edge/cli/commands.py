"""Importing this module registers every command with the app."""
from lpmr_edge.cli import core  # noqa: F401
