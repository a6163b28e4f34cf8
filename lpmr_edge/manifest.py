"""Hashes, tool versions, atomic writes and manifests shared by artifacts and results."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from lpmr_edge.backends import BACKENDS
from lpmr_edge.errors import UserError

MANIFEST_NAME = "manifest.json"
_TOOLS = ("lpmr-edge", "torch", "torchvision", *(tool for backend in BACKENDS.values() for tool in backend.manifest_tools),
          "nncf", "open_clip_torch", "numpy", "scikit-learn", "scipy")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """Hex sha256 of a JSON-serialisable value in canonical form."""
    return sha256_bytes(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def tool_versions() -> dict[str, str]:
    """Installed versions of the tools that shape an artifact or a result."""
    versions = {"python": platform.python_version()}
    for tool in _TOOLS:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            versions[tool] = "not installed"
    return versions


def machine_info() -> dict[str, Any]:
    """What machine produced a figure: architecture, CPU model, core count."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"arch": platform.machine(), "cpu": cpu, "cores": os.cpu_count(), "system": platform.system(),
            "node": platform.node()}


def now_utc() -> str:
    """Current UTC time in ISO format (seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results and weights are meant to be shared
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: Any) -> None:
    """Atomically write pretty-printed JSON."""
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file, turning a missing or broken file into a clear error."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{what} is not valid JSON ({path}: {error}); delete it and re-run to rebuild") from None


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under a directory (relative paths), manifest and temp files excluded."""
    hashes = {}
    for path in sorted(Path(directory).rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_file() and relative != MANIFEST_NAME and not path.name.startswith("."):
            hashes[relative] = sha256_file(path)
    return hashes


def write_manifest(directory: Path, content: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` with the given content plus file hashes, versions, machine and time."""
    manifest = {**content, "files": file_hashes(directory), "tool_versions": tool_versions(),
                "machine": machine_info(), "created": now_utc()}
    atomic_write_json(Path(directory) / MANIFEST_NAME, manifest)
    return manifest


def verify_manifest(directory: Path) -> dict[str, Any]:
    """Load a manifest and check every listed file's sha256; raise a UserError on any mismatch."""
    directory = Path(directory)
    manifest = read_json(directory / MANIFEST_NAME, "manifest")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise UserError(f"manifest in {directory} lists no files; re-export the artifact")
    for relative, expected in files.items():
        path = directory / relative
        if not path.is_file():
            raise UserError(f"artifact file missing: {path}; re-export the artifact")
        if sha256_file(path) != expected:
            raise UserError(f"artifact file {path} does not match its manifest hash (tampered or corrupted); "
                            "re-export the artifact")
    return manifest
