"""A runtime on a device: the suite drives it like a local runtime, the device runs every batch.

``DeviceRuntime`` implements ``Runtime`` by talking to the device server (lpmr_edge/devices/serve.py)
through a ``DeviceSession``: it pushes the artifact (each file's sha256 checked on arrival against the
manifest), has the device load it, then sends every ``image_features``/``text_features`` call as
shards of at most ``SHARD_ROWS`` inputs. The device runs a shard in the artifact's static batches,
times each batch itself and reports its peak RSS. Every shard it returns is stored on the host before
it is used (``<cache>/device-shards/<identity>/<inputs hash>.npz``, written atomically), keyed by the
runtime identity (artifact files, runtime version, executed precision, device) and the inputs, so a
re-run after a failure resumes from the last completed shard and no returned result is lost or run twice.

The device runs the backend's runner of the kind asked for (``runner=``, else the device spec's ``?runner=``
where the backend has it, else its default, the Python server); a binary runner (ExecuTorch's ``native``) is
copied to the device and checked there first (lpmr_edge/devices/binary.py). Its kind, library versions and
on-device footprint are in ``describe()["device"]["runner"]`` and its kind and build key in the identity.
"""
from __future__ import annotations

import hashlib
import importlib
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpmr_edge.artifact import TOWERS, foreign_machine_warnings, verify_artifact, verify_reference_outputs
from lpmr_edge.backends import backend
from lpmr_edge.cache import cache_root
from lpmr_edge.devices.base import Device
from lpmr_edge.devices.binary import prepare_runner
from lpmr_edge.devices.serve import decode_array, encode_array
from lpmr_edge.devices.session import DEFAULT_TIMEOUT, DeviceSession
from lpmr_edge.manifest import atomic_write_bytes, sha256_json
from lpmr_edge.runtimes.base import Runtime

SHARDS_DIR = "device-shards"
SHARD_ROWS = 256  # larger calls (e.g. thousands of prompts) are sent as several shards, each resumable


@dataclass(frozen=True)
class Shard:
    """What the device returned for one call: features and its own per-batch timings."""

    features: np.ndarray
    batch_s: np.ndarray
    batch: int
    peak_rss_kb: int


class ShardCache:
    """Returned shards on the host, one atomically written .npz per (identity, tower, inputs)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, tower: str, inputs: np.ndarray) -> Path:
        digest = hashlib.sha256(f"{tower}|{inputs.dtype.str}|{inputs.shape}|".encode())
        digest.update(np.ascontiguousarray(inputs).data)
        return self.directory / f"{digest.hexdigest()}.npz"

    def load(self, path: Path) -> Shard | None:
        if not path.is_file():
            return None
        with np.load(path) as stored:
            return Shard(stored["features"], stored["batch_s"], int(stored["batch"]), int(stored["peak_rss_kb"]))

    def store(self, path: Path, shard: Shard) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, features=shard.features, batch_s=shard.batch_s, batch=shard.batch,
                 peak_rss_kb=shard.peak_rss_kb)
        atomic_write_bytes(path, buffer.getvalue())


class DeviceRuntime(Runtime):
    """An artifact's towers run by the device server; ``describe()`` says which device produced them."""

    def __init__(self, artifact_dir: Path, device: Device, threads: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT, runner: str | None = None) -> None:
        self.artifact_dir = Path(artifact_dir)
        self.manifest = verify_artifact(self.artifact_dir)
        self.name = self.manifest["runtime"]
        # an explicit runner must exist; the device spec's applies to the runtimes that have it
        self.runner = backend(self.name).runner(runner or device.runner, strict=runner is not None)
        self.loader = importlib.import_module(self.runner.loader)  # the module the device runs, for its reports
        self.device = device
        self.installed = prepare_runner(device, self.runner)
        self.session = DeviceSession(device, timeout=timeout, runner=self.installed)
        try:
            self.pushed = self.session.push_artifact(self.artifact_dir, device.workdir)
            self.loaded, _ = self.session.request({"op": "load", "threads": threads, "loader": self.runner.loader,
                                                   "modules": self.runner.modules}, self.runner.loader_source)
        except BaseException:
            self.session.close()
            raise
        hello = self.session.hello
        self.device_description = {**device.describe(), "machine": hello["machine"],
                                   "emulated": device.emulated or hello["emulated"]}
        self._identity = sha256_json({"runtime": self.name, "precision": self.manifest["precision"],
                                      "files": self.manifest["files"], "version": self.loaded["version"],
                                      "executed": self.executed_precision, "device": self.device_description,
                                      "runner": {"kind": self.runner.kind,
                                                 "build": self.installed and self.installed.record["key"]}})
        self.cache = ShardCache(cache_root() / SHARDS_DIR / self._identity)
        self.shards: Counter[str] = Counter()
        self._used: dict[str, list[Shard]] = {tower: [] for tower in TOWERS}
        self.verification = self._verify_reference_outputs()

    def _verify_reference_outputs(self) -> dict[str, dict[str, float]] | None:
        """The device runs the artifact's reference inputs (ExecuTorch artifacts carry them) and must give the
        exporting host's outputs within the manifest's tolerance; None for artifacts without them."""
        if "verification" not in self.manifest:
            return None
        try:
            return verify_reference_outputs(self.artifact_dir, self.manifest,
                                            lambda tower, inputs: self.run_on_device(tower, inputs).features,
                                            f"device {self.device.label} ({self.session.hello['machine']})")
        except BaseException:
            self.session.close()
            raise

    @property
    def runner_info(self) -> dict[str, Any]:
        """The runner as results record it: kind; for a binary runner its library versions, on-device footprint,
        build key, directory and the shared objects it loaded there."""
        if self.installed is None:
            return {"kind": self.runner.kind}
        return {**self.installed.describe(), "libraries": self.loaded.get("libraries")}

    @property
    def device_info(self) -> dict[str, Any]:
        """The device as results record it: kind, label, emulated flag, machine, the runner and the Python (none
        for a binary runner) found there."""
        hello = self.session.hello
        return {**self.device_description, "runner": self.runner_info, "python": hello["python"],
                "python_path": hello["executable"], "libc": hello["libc"], "workdir": self.device.workdir}

    @property
    def executed_precision(self) -> str:
        """What the device executed, as its loader (the host's own loading code) read it back."""
        return self.loaded["executed_precision"]

    @property
    def identity(self) -> str:
        """Artifact files, runtime version, executed precision and the device (its machine included)."""
        return self._identity

    @property
    def model_info(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def static_batch(self) -> dict[str, int | None]:
        """Any batch: the device splits each call into the artifact's static batches itself."""
        return {tower: None for tower in TOWERS}

    def _features(self, tower: str, inputs: np.ndarray) -> np.ndarray:
        return np.concatenate([self._shard(tower, inputs[start:start + SHARD_ROWS])
                               for start in range(0, len(inputs), SHARD_ROWS)])

    def _shard(self, tower: str, inputs: np.ndarray) -> np.ndarray:
        """One shard: from the host's store if the device already returned it, else run there and stored."""
        path = self.cache.path(tower, inputs)
        shard = self.cache.load(path)
        if shard is None:
            shard = self.run_on_device(tower, inputs)
            self.cache.store(path, shard)
            self.shards["run_on_device"] += 1
        else:
            self.shards["from_host_store"] += 1
        self._used[tower].append(shard)
        return shard.features

    def run_on_device(self, tower: str, inputs: np.ndarray) -> Shard:
        """Run ``inputs`` on the device now (the host's store is neither read nor written): features, the
        device's own seconds per static batch and its peak RSS."""
        reply, payload = self.session.request({"op": "run", "tower": tower}, encode_array(inputs))
        return Shard(decode_array(payload), np.asarray(reply["batch_s"], dtype=np.float64), reply["batch"],
                     reply["peak_rss_kb"])

    def _image_features(self, images: np.ndarray) -> np.ndarray:
        return self._features("image", images)

    def _text_features(self, tokens: np.ndarray) -> np.ndarray:
        return self._features("text", tokens)

    def timing(self) -> dict[str, Any]:
        """The device's own per-batch timings and peak RSS over the shards this runtime used (transfers
        excluded); ``emulated`` timings are not latencies and belong in no latency plot or pick."""
        towers = {}
        for tower, shards in self._used.items():
            if shards:
                milliseconds = 1000 * np.concatenate([shard.batch_s for shard in shards])
                towers[tower] = {"batch": shards[0].batch, "batches": len(milliseconds),
                                 "median_ms": float(np.median(milliseconds)),
                                 "p90_ms": float(np.percentile(milliseconds, 90))}
        peak = max([shard.peak_rss_kb for shards in self._used.values() for shard in shards]
                   + [self.loaded["peak_rss_kb"]])
        emulated = self.device_description["emulated"]
        return {"emulated": emulated, "measured_on": self.session.hello["machine"],
                "note": "emulated: not a device latency" if emulated else
                        "measured on the device per static batch, transfers excluded",
                "towers": towers, "peak_rss_mb": peak / 1024, "shards": dict(self.shards)}

    def warnings(self) -> list[str]:
        """Where the device differs from the artifact's target, or executes another precision than asked."""
        machine = self.session.hello["machine"]
        return [*foreign_machine_warnings(self.manifest, machine, f"the device ({machine})"),
                *self.loader.warnings(self.manifest, self.loaded, "the device")]

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "version": self.loaded["version"], "precision": self.manifest["precision"],
                "executed_precision": self.executed_precision, "threads": self.loaded["threads"],
                "identity": self.identity, "model": self.model_info, "artifact": self.manifest,
                **self.loader.description(self.manifest, self.loaded), "warnings": self.warnings(),
                "device": self.device_info, "timing": self.timing(), "reference_outputs": self.verification}

    def close(self) -> None:
        """Stop the device server and the connection: nothing is left running on the device."""
        self.session.close()
