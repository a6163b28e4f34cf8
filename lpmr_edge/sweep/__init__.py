"""Sweeps: a grid of (model, target, runtime, precision, calibration, suite, seed) jobs run as one study.

Modules, one concept each:

* ``spec``     — the sweep TOML file, validated, expanded into jobs and content-addressed artifact builds
* ``store``    — the SQLite results database (jobs, metrics with CIs, manifests, failures, runs)
* ``jobs``     — what a worker runs: build one artifact, or run one job (suite + bench) through the
                 existing export/suite/bench API
* ``engines``  — where tasks run: a local spawn process pool, or Ray tasks
* ``runner``   — the driver: schedules builds before the jobs that need them, applies the retry policy
                 and is the only writer of the database
* ``progress`` — the live display and ``sweep status``
* ``results``  — CSV/Parquet export and the hook that lets ``report``/``pick`` read a sweep database
"""
