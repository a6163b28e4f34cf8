"""Export deployable artifacts: one directory per (target, runtime, precision) with a manifest.

Artifact layout::

    <out_root>/<target>/<runtime>-<precision>[-dynbatch][-head]/
        image.<ext>, text.<ext>   the two towers (OpenVINO .xml+.bin, ExecuTorch .pte)
        manifest.json             format, runtime, precision, target, model, calibration, quantization,
                                  runtime_config, towers, warnings, request_sha256, files (sha256 each),
                                  tool_versions, machine, created

Backend contract (``lpmr_edge/runtimes/<name>/export.py``, the ``exporter`` of the runtime's ``Backend`` record
in ``lpmr_edge/backends.py``)::

    def export_towers(clip: ClipModel, request: ExportRequest, calibration: CalibrationInputs,
                      staging_dir: Path) -> dict

writes the tower files into ``staging_dir`` and returns the backend's manifest fields:
``towers`` ({"image": {"file", "inputs": [{"name","shape","dtype"}], "outputs": [...]}, "text": ...}),
``runtime_config`` (what the runtime must set on load, e.g. INFERENCE_PRECISION_HINT),
``quantization`` (the parameters actually used), ``warnings`` (list of str) and any extras
(e.g. ``delegation`` for ExecuTorch). Image tower input: float32 ``[image_batch,3,H,W]`` (batch -1 when
dynamic); text tower input: int64 ``[text_batch, context_length]``; outputs: unnormalised features ``[B,D]``.
The common code here adds model, target, calibration, file hashes and tool versions, and moves the staged
directory into place atomically. Exports are resumable: an artifact whose manifest verifies and whose
request hash matches is kept as is. What a runtime checks before loading an artifact is lpmr_edge/artifact.py.

Files exported once serve every target, and every precision, that would export the same bytes: a backend whose
files depend on the target only through its batches and its runtime's options, and on some precisions only
through what the runtime sets on load (``Backend.same_files``: OpenVINO bf16 is the FP32 IR with a bf16
inference hint), defines (contract)::

    def retarget(fields: dict, request: ExportRequest) -> dict

which, given the backend manifest fields of an artifact with the same ``export_identity`` made for another
target or precision, returns ``request``'s (threads, architecture, runtime settings and the notes that depend
on them restated). An export then hardlinks (or copies) that artifact's files instead of exporting, and its
manifest says ``reused_from``.
"""
from __future__ import annotations

import contextlib
import glob
import importlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lpmr_edge.artifact import FORMAT, verify_artifact
from lpmr_edge.backends import BACKENDS, source_file
from lpmr_edge.errors import UserError
from lpmr_edge.lifetime import exit_with_parent
from lpmr_edge.manifest import (
    MANIFEST_NAME,
    read_json,
    sha256_file,
    sha256_json,
    tool_versions,
    write_manifest,
)
from lpmr_edge.quantize import QuantizationOptions, calibration_dataset, load_calibration_inputs
from lpmr_edge.targets import Target

if TYPE_CHECKING:
    from lpmr_edge.models import ClipModel

DEFAULT_OUT_ROOT = Path("lpmr-results/artifacts")
DEFAULT_OPTIONS = QuantizationOptions()
FUSED_HEAD_RUNTIMES = tuple(name for name, backend in BACKENDS.items() if backend.fused_head)
Log = Callable[[str], None]


@dataclass(frozen=True)
class ExportRequest:
    """Everything that determines one artifact."""

    model: str
    target: Target
    runtime: str
    precision: str
    options: QuantizationOptions = DEFAULT_OPTIONS
    dynamic_batch: bool = False
    fuse_head: bool = False

    def __post_init__(self) -> None:
        if self.runtime not in BACKENDS:
            raise UserError(f"unknown export runtime '{self.runtime}'; use one of {', '.join(BACKENDS)}")
        allowed = BACKENDS[self.runtime].precisions
        if self.precision not in allowed:
            raise UserError(f"{self.runtime} cannot export precision '{self.precision}'; use one of "
                            f"{', '.join(allowed)}")
        if self.fuse_head and self.runtime not in FUSED_HEAD_RUNTIMES:
            raise UserError(f"--fuse-head is supported for {', '.join(FUSED_HEAD_RUNTIMES)} only, not "
                            f"{self.runtime}")

    @property
    def name(self) -> str:
        """Artifact directory name."""
        return "-".join([self.runtime, self.precision, *(["dynbatch"] if self.dynamic_batch else []),
                         *(["head"] if self.fuse_head else [])])

    @property
    def batch(self) -> dict[str, int | None]:
        """Static batch per tower (None: dynamic)."""
        return {"image": None if self.dynamic_batch else self.target.image_batch,
                "text": None if self.dynamic_batch else self.target.text_batch}

    def describe(self) -> dict[str, Any]:
        """Manifest entry (also hashed into ``request_sha256``)."""
        return {"model": self.model, "target": self.target.describe(), "runtime": self.runtime,
                "precision": self.precision, "options": self.options.describe(),
                "dynamic_batch": self.dynamic_batch, "fuse_head": self.fuse_head}


def artifact_path(out_root: Path, request: ExportRequest) -> Path:
    """Where ``request``'s artifact lives under ``out_root``."""
    return Path(out_root) / request.target.name / request.name


def request_warnings(request: ExportRequest) -> list[str]:
    """Warnings every artifact of this kind carries (its backend's warning for integer precisions on the
    target's architecture)."""
    warning = BACKENDS[request.runtime].arch_warnings.get(request.target.arch)
    return [warning] if warning and request.precision.startswith("int") else []


def _is_current(directory: Path, request: ExportRequest, request_sha256: str) -> bool:
    if not (directory / MANIFEST_NAME).is_file():
        return False
    try:
        return verify_artifact(directory, request.runtime).get("request_sha256") == request_sha256
    except UserError:
        return False


def _move_into_place(staging: Path, destination: Path) -> None:
    """Replace ``destination`` by ``staging`` so readers never see a half-written directory."""
    retired = None
    if destination.exists():
        retired = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.old-"))
        os.replace(destination, retired / destination.name)
    os.replace(staging, destination)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def _staging_prefix(destination: Path, pid: int) -> str:
    return f".{destination.name}.staging-{socket.gethostname()}-{pid}-"


def _remove_abandoned_staging(destination: Path) -> None:
    """Remove staging directories left beside ``destination`` by killed exports of this host (their process
    is gone); other hosts' (a shared artifact store) are left alone."""
    prefix = _staging_prefix(destination, 0)[:-2]
    for staging in destination.parent.glob(f"{glob.escape(prefix)}*"):
        pid = staging.name[len(prefix):].split("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(staging, ignore_errors=True)
        except PermissionError:
            continue


@contextlib.contextmanager
def staged_directory(destination: Path) -> Iterator[Path]:
    """Yield an empty staging directory beside ``destination``; on success it replaces ``destination``.
    Staging directories of killed exports are removed first."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(destination)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=_staging_prefix(destination, os.getpid())))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the artifact should not be
    try:
        yield staging
        _move_into_place(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# What the common code writes into a manifest (the rest is the backend's ``export_towers`` fields).
COMMON_FIELDS = frozenset({"format", "runtime", "precision", "target", "model", "calibration", "request",
                           "request_sha256", "export_identity", "reused_from", "warnings", "files", "tool_versions",
                           "machine", "created"})


def _write_manifest(directory: Path, request: ExportRequest, hashes: tuple[str, str], fields: dict[str, Any],
                    model: dict[str, Any], calibration: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """The artifact manifest of ``request`` in ``directory``: the backend's ``fields``, ``model`` and
    ``calibration`` (described), the request and its ``hashes`` (``fingerprints``)."""
    fields = dict(fields)
    warnings = [*request_warnings(request), *fields.pop("warnings", [])]
    if model["kind"] != "pretrained":
        warnings.append(f"model '{model['spec']}' is {model['label']}")
    write_manifest(directory, {
        **fields, **(extra or {}), "format": FORMAT, "runtime": request.runtime, "precision": request.precision,
        "target": {**request.target.describe(), "batch": request.batch}, "model": model, "calibration": calibration,
        "request": request.describe(), "request_sha256": hashes[0], "export_identity": hashes[1],
        "warnings": warnings})


def _loaded(clip: ClipModel | None, spec: str) -> ClipModel:
    from lpmr_edge.models import load_model

    return clip or load_model(spec)


def _export_here(request: ExportRequest, destination: Path, hashes: tuple[str, str],
                 clip: ClipModel | None = None) -> None:
    """Export in this process into ``destination`` (replaced atomically)."""
    clip = _loaded(clip, request.model)
    calibration = load_calibration_inputs(clip, request.options)
    backend = importlib.import_module(BACKENDS[request.runtime].exporter)
    with staged_directory(destination) as staging:
        fields = backend.export_towers(clip, request, calibration, staging)
        _write_manifest(staging, request, hashes, fields, clip.describe(), calibration.describe())


def _hashed_with(request: ExportRequest, weights_sha256: str) -> dict[str, Any]:
    """What besides the request shapes an artifact: weights, calibration images, tool versions and the backend
    exporter's source: every module of its runtime folder (a changed exporter, or a module it calls there such as
    a quantizer, invalidates its artifacts)."""
    return {"format": FORMAT, "weights_sha256": weights_sha256,
            "calibration_sha256": calibration_dataset(request.options).sha256, "tool_versions": tool_versions(),
            "backend_sha256": sha256_json({path.name: sha256_file(path) for path in
                                           sorted(source_file(BACKENDS[request.runtime].exporter).parent.glob("*.py"))})}


def _file_shaping(request: ExportRequest) -> dict[str, Any]:
    """``request.describe()`` with the target cut to what reaches the files: the towers' batches and the runtime's
    options (its name, threads and architecture reach only the manifest), and the precision whose files the
    request's precision writes (``Backend.same_files``: e.g. OpenVINO bf16 is FP32 IR run with a bf16 hint)."""
    return {**request.describe(), "precision": BACKENDS[request.runtime].files_precision(request.precision),
            "target": {"batch": request.batch, "options": dict(request.target.runtime(request.runtime).options)}}


def fingerprints(request: ExportRequest, weights_sha256: str) -> tuple[str, str]:
    """``(request_fingerprint, export_identity)`` of ``request``, hashing their shared inputs once."""
    shared = _hashed_with(request, weights_sha256)
    return (sha256_json({"request": request.describe(), **shared}),
            sha256_json({"request": _file_shaping(request), **shared}))


def request_fingerprint(request: ExportRequest, weights_sha256: str) -> str:
    """Hash of everything that shapes an artifact (its files and manifest): the request and ``_hashed_with``."""
    return fingerprints(request, weights_sha256)[0]


def export_identity(request: ExportRequest, weights_sha256: str) -> str:
    """Hash of what reaches an artifact's files: ``request_fingerprint`` with the target cut to the towers'
    batches and the runtime's options, and the precision to the one whose files it writes."""
    return fingerprints(request, weights_sha256)[1]


def same_files_artifact(out_root: Path, request: ExportRequest, identity: str) -> Path | None:
    """An artifact under ``out_root/<target>/`` (another target's, or another precision's that writes the same
    files) of ``request``'s export ``identity`` whose files verify (its files are what exporting ``request``
    would write), if ``request``'s backend can ``retarget``; or None."""
    destination = artifact_path(out_root, request).resolve()
    backend = BACKENDS[request.runtime]
    alike = {replace(request, precision=precision).name for precision in backend.precisions
             if backend.files_precision(precision) == backend.files_precision(request.precision)}
    for manifest in [path for name in [request.name, *sorted(alike - {request.name})]  # its own precision's first
                     for path in sorted(Path(out_root).glob(f"*/{glob.escape(name)}/{MANIFEST_NAME}"))]:
        candidate = manifest.parent.resolve()
        try:
            if candidate != destination and read_json(manifest, "manifest").get("export_identity") == identity \
                    and verify_artifact(candidate, request.runtime):
                return candidate if hasattr(importlib.import_module(BACKENDS[request.runtime].exporter),
                                            "retarget") else None
        except UserError:  # being replaced, or broken: not a source
            continue
    return None


def _link_or_copy(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)
    except OSError:  # another file system, or no hard links there
        shutil.copy2(source, destination)


def reuse_files(source: Path, destination: Path, request: ExportRequest, hashes: tuple[str, str]) -> None:
    """Make ``request``'s artifact in ``destination`` (replaced atomically) from the files of ``source``
    (``same_files_artifact``), hardlinked or copied, with its own manifest: the backend's fields retargeted
    and ``reused_from`` naming the source (relative to the artifact root) and its manifest's sha256."""
    manifest = read_json(source / MANIFEST_NAME, "manifest")
    backend = importlib.import_module(BACKENDS[request.runtime].exporter)
    fields = backend.retarget({key: value for key, value in manifest.items() if key not in COMMON_FIELDS}, request)
    origin = {"artifact": source.relative_to(source.parents[1]).as_posix(),
              "manifest_sha256": sha256_file(source / MANIFEST_NAME),
              "why": "same export identity (model, weights, runtime, the files' precision, quantization and "
                     "calibration, batches, runtime options, tools): the files are those this export would write"}
    with staged_directory(destination) as staging:
        for relative in manifest["files"]:
            _link_or_copy(source / relative, staging / relative)
        _write_manifest(staging, request, hashes, fields, manifest["model"], manifest["calibration"],
                        {"reused_from": origin})


def export_artifact(request: ExportRequest, out_root: Path = DEFAULT_OUT_ROOT, force: bool = False,
                    isolate: bool = True, clip: ClipModel | None = None,
                    request_sha256: str | None = None, identity_sha256: str | None = None) -> tuple[Path, bool]:
    """Export one artifact unless an up-to-date one exists; returns its directory and whether it was current.

    Unless ``force``, an artifact of another target under ``out_root`` with the same ``export_identity`` gives
    its files (``reuse_files``) instead of an export. With ``isolate`` the export runs in a fresh 'spawn'
    subprocess (bounding memory); ``clip`` saves reloading the model for the up-to-date check, and
    ``request_sha256`` and ``identity_sha256`` (the request's ``request_fingerprint`` and ``export_identity``,
    when the caller has them) save loading the model unless it has to export.
    """
    if request_sha256 is None:
        clip = _loaded(clip, request.model)
        request_sha256, identity_sha256 = fingerprints(request, clip.weights_sha256)
    destination = artifact_path(out_root, request).resolve()
    if not force and _is_current(destination, request, request_sha256):
        return destination, True
    if identity_sha256 is None:
        clip = _loaded(clip, request.model)
        identity_sha256 = export_identity(request, clip.weights_sha256)
    hashes = request_sha256, identity_sha256
    source = None if force else same_files_artifact(out_root, request, identity_sha256)
    if source is not None:
        reuse_files(source, destination, request, hashes)
    elif not isolate:
        _export_here(request, destination, hashes, clip)
    else:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"),
                                 initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            try:
                pool.submit(_export_here, request, destination, hashes).result()
            except BrokenProcessPool:
                raise UserError(f"the export process for {request.name} died (out of memory?); free memory or "
                                "export fewer artifacts at once") from None
    return destination, False


def export_outcome(path: Path, current: bool) -> str:
    """What ``export_artifact`` did for the artifact in ``path`` (``current``: it was up to date), in words."""
    reused = None if current else read_json(path / MANIFEST_NAME, "manifest").get("reused_from")
    return "up to date" if current else f"files of {reused['artifact']} reused" if reused else "exported"


def plan_exports(model: str, target: Target, runtimes: Sequence[str] | None = None,
                 precisions: Sequence[str] | None = None, options: QuantizationOptions = DEFAULT_OPTIONS,
                 dynamic_batch: bool = False, fuse_head: bool = False) -> tuple[list[ExportRequest], list[str]]:
    """The requests an export of ``target`` makes, and notes the user should see before it starts.

    Without ``precisions`` each runtime exports its target's list; with them, every listed precision
    the runtime supports. ``fuse_head`` applies to the runtimes that support it.
    """
    runtimes = list(runtimes or target.runtimes)
    requests, notes = [], []
    for runtime in runtimes:
        entry = target.runtime(runtime)
        chosen = entry.precisions if precisions is None else \
            [p for p in precisions if p in BACKENDS[runtime].precisions]
        requests += [ExportRequest(model=model, target=target, runtime=runtime, precision=precision,
                                   options=options, dynamic_batch=dynamic_batch,
                                   fuse_head=fuse_head and runtime in FUSED_HEAD_RUNTIMES)
                     for precision in chosen]
        warning = BACKENDS[runtime].arch_warnings.get(target.arch)
        if warning:
            notes.append(f"target {target.name}: {warning}; {runtime} exports {', '.join(chosen) or 'nothing'} here")
    unmatched = set(precisions or ()) - {request.precision for request in requests}
    if unmatched:
        raise UserError(f"precision(s) {', '.join(sorted(unmatched))} not supported by runtime(s) "
                        f"{', '.join(runtimes)}; supported: "
                        + "; ".join(f"{r}: {', '.join(BACKENDS[r].precisions)}" for r in runtimes))
    if fuse_head and not set(runtimes) & set(FUSED_HEAD_RUNTIMES):
        raise UserError(f"--fuse-head needs runtime {', '.join(FUSED_HEAD_RUNTIMES)}")
    return requests, notes


def export_target(model_spec: str, target: Target, runtimes: Sequence[str] | None = None,
                  precisions: Sequence[str] | None = None, out_root: Path = DEFAULT_OUT_ROOT,
                  options: QuantizationOptions = DEFAULT_OPTIONS, dynamic_batch: bool = False,
                  fuse_head: bool = False, force: bool = False, isolate: bool = True,
                  log: Log | None = None, advance: Callable[[int], None] | None = None) -> list[Path]:
    """Export every (runtime, precision) of a target (see ``plan_exports``); returns the artifact directories.
    ``advance(1)`` is called after each artifact."""
    from lpmr_edge.models import load_model

    requests, notes = plan_exports(model_spec, target, runtimes, precisions, options, dynamic_batch, fuse_head)
    report = log or (lambda message: None)
    for note in notes:
        report(f"note: {note}")
    clip = load_model(model_spec) if requests else None
    paths = []
    for request in requests:
        path, current = export_artifact(request, out_root, force=force, isolate=isolate, clip=clip)
        report(f"{request.name}: {export_outcome(path, current)} -> {path}")
        paths.append(path)
        if advance:
            advance(1)
    return paths


def with_image_batch(target: Target, batch: int) -> Target:
    """A copy of ``target`` whose image tower is exported at a different static batch (named ``<name>-b<batch>``)."""
    return replace(target, name=f"{target.name}-b{batch}", image_batch=batch)
