"""`lpmr-edge support`: the architecture × runtime-precision coverage matrix, measured on this machine."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lpmr_edge.cli.app import app
from lpmr_edge.cli.core import JsonOption
from lpmr_edge.cli.params import ARCHITECTURE, OUTPUT_DIR, SUPPORT_CELL, TARGET, whole_number
from lpmr_edge.cli.ui import console, print_json, print_table

PARITY_IMAGES = whole_number(1, 64, below=10_001)


@app.command("support")
def support_command(
    arch: Annotated[list[str] | None, typer.Option("--arch", parser=ARCHITECTURE, help="open_clip architecture (random weights) or model "
                                                   "spec; repeatable (default: the README's list)")] = None,
    cell: Annotated[list[str] | None, typer.Option("--cell", parser=SUPPORT_CELL, help="RUNTIME:PRECISION, repeatable (default: "
                                                   "openvino fp32/int8/int4-w, executorch fp32/int8)")] = None,
    target: Annotated[str, typer.Option(parser=TARGET, help="Target whose threads and batch the exports use")] = "x86",
    parity_images: Annotated[int, typer.Option(parser=PARITY_IMAGES, help="fmnist-test images for parity")] = 64,
    root: Annotated[Path, typer.Option(parser=OUTPUT_DIR, help="Where cells (JSON) and artifacts are stored; finished cells are "
                                            "not redone")] = Path("lpmr-results/support"),
    stored: Annotated[bool, typer.Option("--stored", help="Only show the stored cells; measure nothing")] = False,
    remeasure: Annotated[bool, typer.Option("--remeasure", help="Time the stored cells' latency again (exports and "
                                            "parity kept), e.g. on a quieter machine")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the matrix as a Markdown table")] = False,
    json_output: JsonOption = False,
) -> None:
    """Export each architecture at each runtime-precision, check parity with torch FP32, report ExecuTorch
    delegation and batch-1 image latency against FP32; failing cells show a one-line reason."""
    from lpmr_edge.manifest import now_utc
    from lpmr_edge.support import (
        ARCHITECTURES,
        CELLS,
        TABLE_COLUMNS,
        SupportSettings,
        markdown_table,
        parse_cell,
        run_support,
        support_matrix,
        table_rows,
    )

    cells = [parse_cell(text) for text in cell] if cell else list(CELLS)
    architectures = arch or list(ARCHITECTURES)
    settings = SupportSettings(target=target, parity_images=parity_images)
    log = (lambda message: console.print(message, highlight=False))
    matrix = support_matrix(architectures, cells, settings, root) if stored else \
        run_support(architectures, cells, settings, root, log, remeasure_before=now_utc() if remeasure else None)
    if json_output:
        print_json(matrix)
    elif markdown:
        print(markdown_table(matrix))
    else:
        print_table("lpmr-edge support", list(TABLE_COLUMNS), table_rows(matrix))
