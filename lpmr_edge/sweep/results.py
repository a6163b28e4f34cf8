"""A sweep database as analysis input: CSV/Parquet tables, and result directories for ``report``/``pick``.

``report`` and ``pick`` read result directories; a sweep database stands for the directories of its done
jobs (and their ``bench.json``). A sweep usually holds several results per (model, target, runtime,
precision) — one per suite, seed and calibration setting — while a report compares one of each, so
select with a query after the path: ``sweep.db?suite=quick&seed=0&calibration=0``.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from lpmr_edge.errors import UserError
from lpmr_edge.sweep.jobs import BENCH_FILE
from lpmr_edge.sweep.store import SweepStore, is_sqlite

FORMATS = ("csv", "parquet")
SELECTORS = ("suite", "seed", "calibration")
_JOB_COLUMNS = ("model", "target", "runtime", "precision", "calibration", "suite", "seed", "threads")


def _split(reference: Path | str) -> tuple[Path, str]:
    path, _, query = str(reference).partition("?")
    return Path(path), query


def is_sweep_reference(reference: Path | str) -> bool:
    """True if ``reference`` is an SQLite file, optionally followed by ``?selectors``."""
    return is_sqlite(_split(reference)[0])


def sweep_inputs(reference: Path | str) -> tuple[list[Path], list[Path]]:
    """Result directories and bench files of a sweep's done jobs, one per (model, target, runtime, precision)."""
    path, query = _split(reference)
    selection = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(selection) - set(SELECTORS))
    if unknown:
        raise UserError(f"unknown selector '{unknown[0]}' in {reference}; use {', '.join(SELECTORS)} "
                        f"(e.g. {path}?suite=quick&seed=0)")
    store = SweepStore.open_existing(path)
    try:
        where = " AND ".join(["status = 'done'", *(f"{name} = ?" for name in selection)])
        rows = store.db.execute(f"SELECT * FROM jobs WHERE {where} ORDER BY position",
                                tuple(selection.values())).fetchall()
    finally:
        store.close()
    if not rows:
        raise UserError(f"no done job in {reference}; run the sweep (or loosen the selection)")
    cells: dict[tuple, list] = {}
    for row in rows:
        cells.setdefault((row["model"], row["target"], row["runtime"], row["precision"]), []).append(row)
    if any(len(found) > 1 for found in cells.values()):
        varying = {name: sorted({str(row[name]) for row in rows}) for name in SELECTORS}
        example = "&".join(f"{name}={values[0]}" for name, values in varying.items() if len(values) > 1)
        raise UserError(f"{reference} holds several results per runtime and precision ("
                        + ", ".join(f"{name}s {', '.join(values)}" for name, values in varying.items()
                                    if len(values) > 1)
                        + f"); select one set, e.g. '{path}?{example}'")
    directories = [Path(row["results_dir"]) for row in rows]
    return directories, [d / BENCH_FILE for d in directories if (d / BENCH_FILE).is_file()]


def export_tables(database: Path, out: Path, fmt: str) -> list[Path]:
    """Write ``jobs.<fmt>`` and ``metrics.<fmt>`` (metrics joined with their job's grid cell) into ``out``."""
    import pandas as pd

    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'; use {' or '.join(FORMATS)}")
    store = SweepStore.open_existing(database)
    try:
        jobs = pd.read_sql_query("SELECT * FROM jobs ORDER BY position", store.db)
        metrics = pd.read_sql_query(
            f"SELECT m.job_id, {', '.join('j.' + c for c in _JOB_COLUMNS)}, m.metric, m.value, m.ci_low, m.ci_high "
            "FROM metrics m JOIN jobs j ON j.id = m.job_id ORDER BY j.position, m.metric", store.db)
    finally:
        store.close()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in (("jobs", jobs), ("metrics", metrics)):
        path = out / f"{name}.{fmt}"
        if fmt == "csv":
            table.to_csv(path, index=False)
        else:
            table.to_parquet(path, index=False)
        written.append(path)
    return written
