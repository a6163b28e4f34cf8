"""Importing this module registers every command with the app."""
from lpmr_edge.cli import (
    artifacts,  # noqa: F401
    core,  # noqa: F401
    device,  # noqa: F401
    doctor,  # noqa: F401
    report,  # noqa: F401
    run,  # noqa: F401
    suite,  # noqa: F401
    support,  # noqa: F401
    sweep,  # noqa: F401
    tune,  # noqa: F401
)
