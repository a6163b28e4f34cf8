"""The CLI's registration has no import cycle: the Typer app lives in ``cli/app.py``, command modules
register on it, and the package, ``python -m lpmr_edge`` and the console script import cleanly."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_entry_points_import_cleanly(tmp_path: Path):
    for code in (("import lpmr_edge.cli.artifacts; from lpmr_edge.cli import app; assert 'export' in "
                 "[c.name for c in app.registered_commands]"),
                 "from lpmr_edge.cli import main"):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False)
        assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "-m", "lpmr_edge", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, check=False)
    assert run.returncode == 0 and "eval" in run.stdout, run.stderr
