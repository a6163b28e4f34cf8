"""The native ExecuTorch runner (lpmr_edge/runtimes/executorch/native): built against the executorch wheel's C++
runtime and driven over its stdin/stdout with the device protocol, it gives the Python runtime's outputs; a bundle
that is incomplete, corrupted, foreign or killed is named in one line. Through the runtime registry
(``?runner=native``): over the loopback sshd it gives the local results exactly, faults are one line and resumable,
and on the emulated arm64 device, with the root's Python packages hidden, it matches x86 to the artifact's
tolerance. Bundles are built once per session (in the user's cache, keyed by content)."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from conftest import target_toml
from device_fixtures import SshServer, _export, one_line_error, processes_inside, run_cli, wait_until

from lpmr_edge.artifact import feature_agreement, verify_reference_outputs
from lpmr_edge.backends import NATIVE_RUNNER, backend
from lpmr_edge.devices import binary, emulated, serve
from lpmr_edge.devices.binary import RECORD, check_bundle, explain_runner_exit
from lpmr_edge.devices.emulated import GUEST_PYTHON, EmulatedArm64
from lpmr_edge.errors import UserError
from lpmr_edge.runtimes.device import DeviceRuntime
from lpmr_edge.runtimes.executorch.native import build as native_build
from lpmr_edge.runtimes.executorch.native.build import RUNNER, build_runner, toolchain
from lpmr_edge.runtimes.executorch.native.client import LocalRunner
from lpmr_edge.runtimes.factory import open_runtime
from lpmr_edge.suite import EvalSettings, evaluate

pytest_plugins = ["device_fixtures"]

HOST = platform.machine()
BATCH = 3
ROWS = 7  # three static batches, the last one zero-padded
VOCAB = 49408
PRECISIONS = ("fp32", "int8")
CROSS_SYSROOT = Path("/usr/aarch64-linux-gnu")  # glibc and libstdc++ for aarch64, from the cross toolchain


def python_features(pte: Path, inputs: np.ndarray, batch: int) -> np.ndarray:
    """The ExecuTorch Python runtime's outputs for ``inputs`` in static batches, the last zero-padded."""
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(pte).load_method("forward")
    padded = np.concatenate([inputs, np.zeros((-len(inputs) % batch, *inputs.shape[1:]), dtype=inputs.dtype)])
    return np.concatenate([method.execute([torch.from_numpy(padded[start:start + batch])])[0].numpy()
                           for start in range(0, len(padded), batch)])[:len(inputs)]


def tower_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((ROWS, 3, 28, 28), dtype=np.float32),
            "text": rng.integers(0, VOCAB, (ROWS, 77), dtype=np.int64)}


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 and int8 .pte of the one-layer stand-in with static batch 3."""
    target = tmp_path_factory.mktemp("target") / "native.toml"
    target.write_text(target_toml("native", "batch-3 test target", HOST, 2, BATCH, {"executorch": list(PRECISIONS)}))
    return {precision: _export("executorch", str(target), tmp_path_factory.mktemp(precision), precision)
            for precision in PRECISIONS}


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_native_runner_gives_the_python_runtimes_outputs(precision: str, bundle: Path,
                                                             artifacts: dict[str, Path], tmp_path: Path) -> None:
    artifact = artifacts[precision]
    runner = LocalRunner([str(bundle / RUNNER)])
    assert runner.hello["protocol"] == serve.PROTOCOL and runner.hello["machine"] == HOST
    assert runner.hello["runner"] == "native" and runner.hello["python"] is None
    pushed = runner.push(artifact, tmp_path)
    manifest_sha = hashlib.sha256((artifact / "manifest.json").read_bytes()).hexdigest()
    assert Path(pushed["directory"]) == tmp_path / "artifacts" / manifest_sha[:16]  # serve.py's place for it
    assert runner.push(artifact, tmp_path)["missing"] == []  # its sha256 of every file agrees with hashlib's
    loaded, _ = runner.request({"op": "load", "threads": 2})
    assert (loaded["runtime"], loaded["threads"], loaded["version"]) == ("executorch", 2, runner.hello["executorch"])
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert loaded["executed_precision"] == manifest["runtime_config"]["executed_precision"]
    libraries = {Path(path).name: Path(path).parent for path in loaded["libraries"]}
    assert libraries["libexecutorch.so"] == bundle / "lib"  # from its bundle, not from the Python package
    assert not any(name.startswith(("libtorch", "libc10", "libpython")) for name in libraries)
    for tower, inputs in tower_inputs().items():
        reply, native = runner.features(tower, inputs)
        expected = python_features(artifact / f"{tower}.pte", inputs, BATCH)
        assert native.dtype == np.float32 and native.shape == expected.shape
        np.testing.assert_allclose(native, expected, rtol=1e-5, atol=1e-6)
        assert reply["batch"] == BATCH and len(reply["batch_s"]) == 3 and reply["peak_rss_kb"] >= loaded["peak_rss_kb"]
    assert runner.close()[0] == 0


@pytest.mark.slow
def test_requests_it_cannot_serve_are_one_line_errors_and_it_carries_on(bundle: Path, artifacts: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    artifact = artifacts["fp32"]
    runner = LocalRunner([str(bundle / RUNNER)])
    assert "load the artifact first" in runner.request({"op": "run", "tower": "image"}, b"x")[0]["error"]
    assert "no artifact was announced" in runner.request({"op": "load"})[0]["error"]
    runner.request({"op": "artifact", "workdir": str(tmp_path)}, (artifact / "manifest.json").read_bytes())
    corrupted = bytearray((artifact / "image.pte").read_bytes())
    corrupted[100] ^= 0xFF
    reply, _ = runner.request({"op": "put", "file": "image.pte"}, bytes(corrupted))
    assert "the transfer was corrupted" in reply["error"] and "\n" not in reply["error"]
    assert "not a file of the announced artifact" in runner.request({"op": "put", "file": "x"}, b"abc")[0]["error"]
    assert "incomplete on the device (missing image.pte" in runner.request({"op": "load"})[0]["error"]
    runner.push(artifact, tmp_path)
    assert runner.request({"op": "load", "threads": 1})[0]["threads"] == 1  # the thread pool, read back
    assert runner.request({"op": "load", "threads": None})[0]["threads"] == 2  # the manifest's threads
    wrong_shape = np.zeros((2, 3, 27, 28), dtype=np.float32)
    reply, _ = runner.request({"op": "run", "tower": "image"}, serve.encode_array(wrong_shape))
    assert "do not have the shape the artifact takes (N[3, 28, 28])" in reply["error"]
    assert "unknown request 'probe2'" in runner.request({"op": "probe2"})[0]["error"]
    reply, features = runner.features("image", tower_inputs()["image"][:2].astype(np.float64))  # converted
    assert features.shape == (2, 64) and len(reply["batch_s"]) == 1
    assert runner.close()[0] == 0


@pytest.mark.slow
def test_a_bundle_holds_only_what_the_runner_needs_and_is_cached(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = check_bundle(bundle, HOST)
    assert record["executable"] == RUNNER and record["versions"] == {"executorch": metadata.version("executorch")}
    assert set(record["files"]) == {RUNNER, *(f"lib/libexecutorch{part}.so" for part in
                                              ("", "_backend_xnnpack", "_kernels_optimized", "_kernels_quantized",
                                               "_threadpool"))}
    assert not any("torch" in name or "python" in name for name in record["system_libraries"])
    glibc = tuple(int(part) for part in record["requires"]["GLIBC"].split("."))
    assert (2, 17) <= glibc <= tuple(int(part) for part in platform.libc_ver()[1].split("."))  # it runs here
    assert record["footprint_mb"] == pytest.approx(sum((bundle / name).stat().st_size for name in record["files"]) / 1e6)
    modified = (bundle / RUNNER).stat().st_mtime_ns
    monkeypatch.setenv("LPMR_EDGE_CACHE", str(bundle.parent.parent))  # the cache the session fixture built in
    assert build_runner(HOST) == bundle and (bundle / RUNNER).stat().st_mtime_ns == modified


@pytest.mark.slow
def test_a_missing_corrupted_or_foreign_bundle_is_named(bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    foreign = "aarch64" if HOST != "aarch64" else "x86_64"
    with pytest.raises(UserError, match=f"built for {HOST}, the device is {foreign}"):
        check_bundle(copy, foreign)
    (copy / "lib" / "libexecutorch_threadpool.so").unlink()
    with pytest.raises(UserError, match="lib/libexecutorch_threadpool.so is missing"):
        check_bundle(copy, HOST)
    returncode, stderr = _run_in_shell(copy / RUNNER)
    assert "cannot load libexecutorch_threadpool.so (missing from its lib/" in explain_runner_exit(
        returncode, stderr, json.loads((copy / RECORD).read_text()))
    shutil.copy2(bundle / "lib" / "libexecutorch_threadpool.so", copy / "lib")
    (copy / RUNNER).write_bytes(bytes(8) + (bundle / RUNNER).read_bytes()[8:])  # its ELF header damaged
    with pytest.raises(UserError, match="the copy is corrupted"):
        check_bundle(copy, HOST)
    returncode, stderr = _run_in_shell(copy / RUNNER)
    assert "cannot be executed on the device" in explain_runner_exit(returncode, stderr)


def _run_in_shell(runner: Path) -> tuple[int, str]:
    """Start ``runner`` the way an SSH device does (through a shell), with no input; status and stderr."""
    done = subprocess.run(["sh", "-c", f"exec '{runner}'"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False, timeout=60)
    return done.returncode, done.stderr


@pytest.mark.slow
def test_a_killed_runner_is_named_by_its_supervisor(bundle: Path) -> None:
    runner = LocalRunner([str(bundle / RUNNER)])
    assert runner.hello["pid"] != runner.process.pid  # the started process supervises the serving child
    os.kill(runner.hello["pid"], signal.SIGKILL)
    with pytest.raises(EOFError):
        runner.request({"op": "probe", "workdir": "/tmp"})
    returncode, stderr = runner.close()
    assert returncode == 128 + signal.SIGKILL  # as a shell reports it, also over SSH
    assert explain_runner_exit(returncode, stderr) == "the runner was killed by signal 9 (SIGKILL)"
    assert explain_runner_exit(-15, "") == "the runner was killed by signal 15 (SIGTERM)"


def test_a_device_with_older_system_libraries_is_named() -> None:
    stderr = "./runner: /lib/aarch64-linux-gnu/libc.so.6: version `GLIBC_2.34' not found (required by ./runner)\n"
    explained = explain_runner_exit(1, stderr)
    assert "older than the runner needs (GLIBC_2.34, required by runner;" in explained


def test_a_missing_compiler_names_the_debian_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    foreign = "aarch64" if HOST != "aarch64" else "x86_64"
    compiler, package = toolchain(foreign)
    with pytest.raises(UserError, match=re.escape(f"{compiler} is not installed; install the Debian package {package}")):
        build_runner(foreign)


def _qemu() -> list[str] | None:
    """A user-mode QEMU command for aarch64 with the cross toolchain's C and C++ libraries, or None."""
    built = sorted(Path.home().glob(".cache/lpmr-edge/arm64-root/opt/lpmr-edge/qemu-aarch64"))  # QEMU 10, if built
    qemu = str(built[0]) if built else shutil.which("qemu-aarch64-static")
    if qemu is None or not (CROSS_SYSROOT / "lib").is_dir():
        return None
    return [qemu, "-L", str(CROSS_SYSROOT), "-cpu", "cortex-a72"]


@pytest.mark.slow
@pytest.mark.skipif(HOST != "x86_64" or _qemu() is None,
                    reason="needs qemu-aarch64 and the aarch64 cross toolchain (g++-aarch64-linux-gnu)")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_aarch64_runner_alone_gives_the_python_runtimes_outputs_under_qemu(
        precision: str, aarch64_bundle: Path, artifacts: dict[str, Path], tmp_path: Path) -> None:
    artifact = artifacts[precision]
    device = Path(shutil.copytree(aarch64_bundle, tmp_path / "device"))  # only the bundle: no Python
    check_bundle(device, "aarch64")
    runner = LocalRunner([*_qemu(), str(device / RUNNER)])  # type: ignore[misc]
    assert runner.hello["machine"] == "aarch64"
    runner.push(artifact, tmp_path / "work")
    runner.request({"op": "load", "threads": 2})
    manifest = json.loads((artifact / "manifest.json").read_text())
    verify_reference_outputs(artifact, manifest, lambda tower, inputs: runner.features(tower, inputs)[1], "qemu")
    tolerance = manifest["verification"]["tolerance"]
    for tower, inputs in tower_inputs(seed=1).items():
        agreement = feature_agreement(python_features(artifact / f"{tower}.pte", inputs, BATCH),
                                      runner.features(tower, inputs)[1])
        assert agreement["cosine_min"] >= tolerance["cosine_min"], (tower, agreement)
        assert agreement["relative_max_diff"] <= tolerance["relative_max_diff"], (tower, agreement)
    assert runner.close()[0] == 0


@pytest.mark.slow
@pytest.mark.skipif(HOST != "x86_64" or _qemu() is None,
                    reason="needs qemu-aarch64 and the aarch64 cross toolchain (g++-aarch64-linux-gnu)")
def test_a_device_without_a_system_library_the_runner_needs_is_named(aarch64_bundle: Path, tmp_path: Path) -> None:
    sysroot = Path(shutil.copytree(CROSS_SYSROOT / "lib", tmp_path / "sysroot" / "lib", symlinks=True,
                                   ignore=shutil.ignore_patterns("*.a", "*.o"))).parent
    for library in (sysroot / "lib").glob("libstdc++.so*"):
        library.unlink()  # a device image without the C++ runtime
    qemu = [*_qemu()]  # type: ignore[misc]
    qemu[qemu.index("-L") + 1] = str(sysroot)
    done = subprocess.run([*qemu, str(aarch64_bundle / RUNNER)], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, check=False, timeout=120)
    explained = explain_runner_exit(done.returncode, done.stderr, json.loads((aarch64_bundle / RECORD).read_text()))
    assert explained is not None and explained.startswith("the device lacks the system library libstdc++.so.6")
    assert "libc.so.6" in explained and "install it on the device" in explained


# ----------------------------------------------------------------------------- through the runtime registry

SETTINGS = EvalSettings(limit=24, batch_size=8)  # three image shards


def native_spec(sshd: SshServer, workdir: Path) -> str:
    """The loopback sshd as a device with the native runner and no Python named."""
    return f"{sshd.spec(workdir, python=None)}&runner=native"


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_over_ssh_the_native_runner_gives_the_local_results(precision: str, sshd: SshServer, prebuilt: dict[str, Path],
                                                            artifacts: dict[str, Path], tmp_path: Path) -> None:
    artifact = artifacts[precision]
    local = evaluate(open_runtime(artifact=artifact), tmp_path / "local", SETTINGS)
    runtime = open_runtime(artifact=artifact, device=native_spec(sshd, tmp_path / "device"))
    try:
        on_device = evaluate(runtime, tmp_path / "ssh", SETTINGS)
    finally:
        runtime.close()
    assert on_device["metrics"] == local["metrics"]
    for name in ("features", "class_embeddings"):
        np.testing.assert_array_equal(np.load(tmp_path / "ssh" / "outputs" / "id.npz")[name],
                                      np.load(tmp_path / "local" / "outputs" / "id.npz")[name])
    described = json.loads((tmp_path / "ssh" / "manifest.json").read_text())["runtime"]
    record = json.loads((prebuilt[HOST] / RECORD).read_text())
    directory = tmp_path / "device" / "runners" / f"native-{HOST}-{record['key']}"
    runner = described["device"]["runner"]
    assert (runner["kind"], runner["versions"], runner["directory"]) == (
        "native", {"executorch": metadata.version("executorch")}, str(directory))
    assert runner["footprint_mb"] == pytest.approx(sum(path.stat().st_size for path in directory.rglob("*")
                                                                if path.is_file()) / 1e6)
    assert {Path(path).parent for path in runner["libraries"] if "executorch" in path} == {directory / "lib"}
    assert described["device"]["python"] is None and described["device"]["machine"] == HOST
    assert set(described["reference_outputs"]) == {"image", "text"}  # the runner re-ran them on arrival
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert not (tmp_path / "device" / "venv").exists()
    sshd.assert_nothing_left()


@pytest.mark.slow
def test_native_runner_faults_over_ssh_are_one_line_and_resumable(sshd: SshServer, prebuilt: dict[str, Path],
                                                                  artifacts: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    artifact, spec = artifacts["int8"], native_spec(sshd, tmp_path / "device")
    local = evaluate(open_runtime(artifact=artifact), tmp_path / "local", SETTINGS)

    with monkeypatch.context() as patched:  # the device's storage corrupts what it receives
        patched.setattr(binary, "PUT", binary.PUT.replace('cat > "$part";', 'cat > "$part"; printf x >> "$part";'))
        with pytest.raises(UserError) as corrupted:
            open_runtime(artifact=artifact, device=spec)
    assert "the runner's lib/libexecutorch.so arrived with sha256" in str(corrupted.value) and "\n" not in str(corrupted.value)
    assert not list((tmp_path / "device").rglob("*.part"))

    runtime = open_runtime(artifact=artifact, device=spec)
    assert isinstance(runtime, DeviceRuntime) and runtime.installed is not None
    assert runtime.installed.copied == list(runtime.installed.record["files"])  # all of it, the first time
    directory = Path(runtime.installed.directory)
    shards: list[str] = []  # the towers of the shards sent, the killed one last
    request = runtime.session.request

    def kill_before_the_second_image_shard(header: dict, payload: bytes = b"") -> tuple[dict, bytes]:
        shards.extend([header["tower"]] if header.get("op") == "run" else [])
        if shards.count("image") == 2:
            os.kill(runtime.session.hello["pid"], signal.SIGKILL)
        return request(header, payload)

    monkeypatch.setattr(runtime.session, "request", kill_before_the_second_image_shard)
    with pytest.raises(UserError) as killed:
        evaluate(runtime, tmp_path / "out", SETTINGS)
    message = str(killed.value)
    assert "the runner was killed by signal 9 (SIGKILL)" in message and "re-run to resume" in message
    assert "\n" not in message
    sshd.assert_nothing_left()

    (directory / "runner").write_bytes(b"\x00" + (directory / "runner").read_bytes()[1:])  # damaged on the device
    (directory / "lib" / "libexecutorch_threadpool.so").unlink()  # and a library lost
    resumed = open_runtime(artifact=artifact, device=spec)
    try:
        assert resumed.installed.copied == ["lib/libexecutorch_threadpool.so", "runner"]  # type: ignore[union-attr]
        assert evaluate(resumed, tmp_path / "out", SETTINGS)["metrics"] == local["metrics"]
        assert shards == ["text", "image", "image"]  # killed as the second image shard was sent
        # the class embeddings are kept with the text shard's result; the first image shard comes from the store
        assert resumed.shards == {"from_host_store": 1, "run_on_device": 2}
    finally:
        resumed.close()
    sshd.assert_nothing_left()

    monkeypatch.setattr(native_build, "build_runner", lambda arch: prebuilt["aarch64"])  # a foreign bundle
    with pytest.raises(UserError, match=f"built for aarch64, the device is {HOST}"):
        open_runtime(artifact=artifact, device=spec)
    with pytest.raises(UserError, match="runtime 'openvino' has no 'native' runner; use one of python"):
        backend("openvino").runner(NATIVE_RUNNER)
    assert backend("openvino").runner(NATIVE_RUNNER, strict=False).kind == "python"  # a device spec's ?runner=


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_aarch64_runner_on_the_emulated_device_without_python_packages(
        precision: str, emulator: EmulatedArm64, emulated_device: str, prebuilt: dict[str, Path],
        artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulated root's Python runtime (/opt/lpmr-venv: numpy, torch, executorch) is hidden under an empty
    tmpfs in the device's private mount namespace: only the runner bundle and the root's C libraries remain."""
    monkeypatch.setattr(emulated, "_ENTER", emulated._ENTER.replace(
        "exec unshare", f'mount -t tmpfs none "$r{GUEST_PYTHON.split("/bin/")[0]}"\nexec unshare'))
    artifact = artifacts[precision]
    runtime = open_runtime(artifact=artifact, threads=2, device=f"{emulated_device}&runner=native")
    try:
        assert isinstance(runtime, DeviceRuntime) and runtime.verification is not None  # reference outputs checked
        manifest = json.loads((artifact / "manifest.json").read_text())
        tolerance = manifest["verification"]["tolerance"]
        for tower, inputs in tower_inputs(seed=2).items():
            agreement = feature_agreement(python_features(artifact / f"{tower}.pte", inputs, BATCH),
                                          runtime.run_on_device(tower, inputs).features)
            assert agreement["cosine_min"] >= tolerance["cosine_min"], (tower, agreement)
            assert agreement["relative_max_diff"] <= tolerance["relative_max_diff"], (tower, agreement)
        described = runtime.describe()["device"]
        libraries = described["runner"]["libraries"]
    finally:
        runtime.close()
    assert described["machine"] == "aarch64" and described["emulated"] is True and described["python"] is None
    assert described["runner"]["arch"] == "aarch64" and described["runner"]["footprint_mb"] < 50
    assert not [path for path in libraries if "lpmr-venv" in path or "python" in path or "libtorch" in path]
    assert any(path.endswith("/lib/libexecutorch.so") and "/runners/native-aarch64-" in path for path in libraries)
    wait_until(lambda: not processes_inside(emulator.root), "the emulated runner to end")


@pytest.mark.slow
def test_device_setup_copies_the_native_runner_once(sshd: SshServer, prebuilt: dict[str, Path], tmp_path: Path) -> None:
    spec = native_spec(sshd, tmp_path / "device").replace("&runner=native", "")
    first = run_cli("device", "setup", "--device", spec, "--runner", "native", "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout[first.stdout.index("{"):])
    record = json.loads((prebuilt[HOST] / RECORD).read_text())
    assert report["ready"] == {"executorch": True} and report["python"] is None and report["machine"] == HOST
    assert report["runners"]["executorch"]["copied"] == list(record["files"])
    assert not (tmp_path / "device" / "venv").exists()  # nothing installed with pip
    again = run_cli("device", "setup", "--device", spec, "--runner", "native", "--json")
    assert json.loads(again.stdout[again.stdout.index("{"):])["runners"]["executorch"]["copied"] == []
    refused = one_line_error(run_cli("device", "setup", "--device", spec, "--runner", "native", "--runtime", "openvino"))
    assert "none of the runtimes openvino has a 'native' runner" in refused
    sshd.assert_nothing_left()
