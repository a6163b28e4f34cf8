"""`lpmr-edge sweep`: run a grid of jobs (`sweep SWEEP.toml` = `sweep run SWEEP.toml`), `sweep status DB`,
`sweep export DB`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from lpmr_edge.cli.app import app
from lpmr_edge.cli.core import SETTLE_OBJECTIVES, JsonOption, SettleMarginOption, with_settle_options
from lpmr_edge.cli.params import (
    ENGINE,
    EXISTING_FILE,
    EXPORT_FORMAT,
    OBJECTIVE,
    OUTPUT_DIR,
    POSITIVE_INT,
    RAY_ADDRESS,
)
from lpmr_edge.cli.ui import console, print_error, print_json, print_table
from lpmr_edge.sequential import SettleSettings

FAILED_JOBS_EXIT = 1


class _RunByDefault(TyperGroup):
    """``lpmr-edge sweep FILE.toml ...`` means ``lpmr-edge sweep run FILE.toml ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


sweep_app = typer.Typer(cls=_RunByDefault, no_args_is_help=True,
                        help="Sweeps: models x targets x runtimes x precisions x calibrations x suites x seeds, "
                             "on this machine or a Ray cluster, into one SQLite database. "
                             "`lpmr-edge sweep FILE.toml` is short for `lpmr-edge sweep run FILE.toml`.")
app.add_typer(sweep_app, name="sweep")
DatabaseArgument = Annotated[Path, typer.Argument(parser=EXISTING_FILE, help="A sweep database (<out>/sweep.db)")]


@sweep_app.command("run")
@with_settle_options
def run_command(
    sweep_file: Annotated[Path, typer.Argument(parser=EXISTING_FILE, help="Sweep file (see sweeps/demo.toml)")],
    resume: Annotated[bool, typer.Option(help="Continue the sweep in <out>/sweep.db (same grid)")] = False,
    retry_failed: Annotated[bool, typer.Option(help="With --resume: give failed jobs new attempts")] = False,
    engine: Annotated[str, typer.Option(parser=ENGINE, help="local (process pool) | ray")] = "local",
    address: Annotated[str | None, typer.Option(parser=RAY_ADDRESS, help="Ray cluster address HOST:PORT (default: start a "
                                                   "private local Ray instance)")] = None,
    workers: Annotated[int | None, typer.Option(parser=POSITIVE_INT, help="Local engine: jobs at once (default: cores // "
                                                   "threads)")] = None,
    out: Annotated[Path | None, typer.Option(parser=OUTPUT_DIR, help="Output directory (default: the sweep file's 'out')")] = None,
    json_output: JsonOption = False,
    objective: Annotated[str, typer.Option(parser=OBJECTIVE, help="With --until-settled: what each group's decision is "
                                           f"on: {SETTLE_OBJECTIVES}")] = "ece",
    margin: SettleMarginOption = None,
    *,
    until: SettleSettings | None,
) -> None:
    """Run (or --resume) a sweep. Exit status 1 when some jobs failed (see `lpmr-edge sweep status`).
    With --until-settled, the artifacts of each model x target x calibration x suite x seed are evaluated
    together, shard by shard, until their decision on the objective is settled or the budget is spent."""
    from lpmr_edge.errors import UserError
    from lpmr_edge.pick import Constraints
    from lpmr_edge.sweep.progress import live_display, settling
    from lpmr_edge.sweep.runner import run_sweep
    from lpmr_edge.sweep.spec import load_sweep, with_settling

    if retry_failed and not resume:
        raise UserError("--retry-failed continues an existing sweep; add --resume")
    sweep = load_sweep(sweep_file, out)
    if until is not None:
        constraints = Constraints.from_options(margin, objective=objective)
        sweep = with_settling(sweep, objective, constraints.margin(constraints.metric), until)
    with live_display(sweep.name, console) as on_progress:
        progress = run_sweep(sweep, engine=engine, address=address, resume=resume, retry_failed=retry_failed,
                             workers=workers, on_progress=on_progress)
    summary = {"database": str(sweep.db_path), "total": progress.total, "done": progress.done,
               "failed": progress.failed}
    settled = settling(sweep.db_path) if until is not None and sweep.db_path.is_file() else []
    if json_output:
        print_json({**summary, **({"settling": settled} if until is not None else {})})
    else:
        console.print(f"sweep {sweep.name}: {progress.done}/{progress.total} done, {progress.failed} failed "
                      f"-> {sweep.db_path}")
        _print_settling(settled, f"until settled on {objective}")
    if progress.failed:
        print_error(f"{progress.failed} job(s) failed; see `lpmr-edge sweep status {sweep.db_path}`")
        raise typer.Exit(FAILED_JOBS_EXIT)


def _print_settling(rows: list[dict], title: str) -> None:
    """The jobs of settling groups: state, why the group stopped and the images seen of each set."""
    if rows:
        print_table(title, ["#", "job", "model", "target", "runtime-precision", "seed", "state", "stopped",
                            "ID images", "other sets"],
                    [[row["position"], row["id"], row["model"], row["target"], f"{row['runtime']}-{row['precision']}",
                      row["seed"], row["state"], row["stopped"], f"{row['images']} of {row['of']}",
                      ", ".join(f"{name} {n['images']} of {n['of']}" for name, n in (row["sets"] or {}).items())
                      or "—"] for row in rows])


@sweep_app.command("status")
def status_command(database: DatabaseArgument, json_output: JsonOption = False) -> None:
    """Jobs done / running / failed / pending, ETA of a running sweep, every failed job's error, and (--until-settled)
    where each job's settling group stopped."""
    from lpmr_edge.sweep.progress import status

    state = status(database)
    if json_output:
        print_json(state)
        return
    mean = state["job_seconds_mean"]
    print_table(f"sweep {state['name']} ({database})", ["total", "done", "running", "failed", "pending", "ETA",
                                                        "mean job s"],
                [[state["total"], state["done"], state["running"], state["failed"], state["pending"],
                  state["eta"] or ("—" if state["pending"] else "finished"), mean if mean is not None else "—"]])
    if state["interrupted"]:
        console.print(f"{state['interrupted']} job(s) were running when the sweep's driver stopped; "
                      "`lpmr-edge sweep SWEEP.toml --resume` runs them again")
    _print_settling(state["settling"], "jobs evaluated until settled")
    if state["failed_jobs"]:
        print_table("failed jobs", ["#", "job", "model", "target", "runtime-precision", "suite", "seed", "attempts",
                                    "error"],
                    [[job["position"], job["id"], job["model"], job["target"], f"{job['runtime']}-{job['precision']}",
                      job["suite"], job["seed"], job["attempts"], job["error"]] for job in state["failed_jobs"]])


@sweep_app.command("export")
def export_command(
    database: DatabaseArgument,
    format: Annotated[str, typer.Option("--format", parser=EXPORT_FORMAT, help="csv | parquet")] = "csv",
    out: Annotated[Path | None, typer.Option(parser=OUTPUT_DIR, help="Directory for jobs.<ext> and metrics.<ext> (default: "
                                                  "beside the database, export/)")] = None,
) -> None:
    """Write the jobs table and the metrics (one row per job and metric, with the job's grid cell) for analysis."""
    from lpmr_edge.sweep.results import export_tables

    for path in export_tables(database, out or database.parent / "export", format):
        console.print(f"wrote {path}")
