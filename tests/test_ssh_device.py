"""`lpmr-edge eval --device ssh://…` through a real OpenSSH server gives exactly the local results."""
from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from device_fixtures import SshServer, one_line_error, run_cli

from lpmr_edge.devices.kinds import parse_device
from lpmr_edge.devices.setup import setup_device
from lpmr_edge.errors import UserError
from lpmr_edge.manifest import write_manifest
from lpmr_edge.results import read_bench
from lpmr_edge.runtimes.factory import open_runtime
from lpmr_edge.suite import EvalSettings, evaluate

pytest_plugins = ["device_fixtures"]

LIMIT, BATCH = 48, 16  # three image shards and one text shard per run


@pytest.mark.parametrize("runtime", ["openvino", "executorch"])
def test_eval_over_ssh_equals_local(runtime: str, request: pytest.FixtureRequest, sshd: SshServer,
                                    tmp_path: Path) -> None:
    artifact = request.getfixturevalue(f"{runtime}_artifact")
    local = evaluate(open_runtime(artifact=artifact), tmp_path / "local", EvalSettings(limit=LIMIT, batch_size=BATCH))

    run = run_cli("eval", "--device", sshd.spec(tmp_path / "device"), "--artifact", str(artifact),
                  "--limit", str(LIMIT), "--batch-size", str(BATCH), "--out", str(tmp_path / "ssh"), "--json")
    assert run.exit_code == 0, run.output
    remote = json.loads((tmp_path / "ssh" / "metrics.json").read_text())
    assert remote["metrics"] == local["metrics"] and remote["runtime"] == runtime
    for name in ("features", "class_embeddings"):
        np.testing.assert_array_equal(np.load(tmp_path / "ssh" / "outputs" / "id.npz")[name],
                                      np.load(tmp_path / "local" / "outputs" / "id.npz")[name])
    described = json.loads((tmp_path / "ssh" / "manifest.json").read_text())["runtime"]
    assert described["device"] == {**described["device"], "kind": "ssh", "label": f"ssh://root@127.0.0.1:{sshd.port}",
                                   "machine": "x86_64", "emulated": False}
    verified = described["reference_outputs"]  # the device re-ran the artifact's reference inputs
    if runtime == "executorch":
        assert set(verified) == {"image", "text"} and min(v["cosine_min"] for v in verified.values()) > 0.9999
    else:
        assert verified is None  # OpenVINO IR carries no reference outputs
    timing = described["timing"]
    assert timing["emulated"] is False and timing["shards"] == {"run_on_device": 4}
    assert timing["towers"]["image"]["batches"] == LIMIT  # the artifact's static batch is 1
    assert {path.name for path in (tmp_path / "device" / "artifacts").glob("*/*")} == {
        "manifest.json", *json.loads((artifact / "manifest.json").read_text())["files"]}
    sshd.assert_nothing_left()


def test_a_device_that_computes_other_outputs_is_refused(sshd: SshServer, tmp_path: Path,
                                                        executorch_artifact: Path) -> None:
    copy = shutil.copytree(executorch_artifact, tmp_path / "artifact")
    manifest = json.loads((copy / "manifest.json").read_text())
    with np.load(copy / "reference.npz") as reference:
        arrays = dict(reference)
    arrays["text_expected"] = arrays["text_expected"] * -1  # as if the device's kernels were broken
    np.savez_compressed(copy / "reference.npz", **arrays)
    write_manifest(copy, {key: manifest[key] for key in manifest
                          if key not in ("files", "tool_versions", "machine", "created")})
    device = sshd.spec(tmp_path / "device")
    message = one_line_error(run_cli("eval", "--device", device, "--artifact", str(copy), "--limit", "4",
                                     "--out", str(tmp_path / "out")))
    assert f"text tower output(s) on device ssh://root@127.0.0.1:{sshd.port} (x86_64) differ" in message
    assert not (tmp_path / "out" / "metrics.json").exists()
    sshd.assert_nothing_left()


def test_bench_over_ssh_is_timed_by_the_device(sshd: SshServer, tmp_path: Path, openvino_artifact: Path) -> None:
    run = run_cli("bench", "--artifact", str(openvino_artifact), "--device", sshd.spec(tmp_path / "device"),
                  "--repeats", "12", "--max-seconds", "30", "--json-out", str(tmp_path / "bench.json"))
    assert run.exit_code == 0, run.output
    report = json.loads((tmp_path / "bench.json").read_text())
    [row] = report["results"]
    label = f"ssh://root@127.0.0.1:{sshd.port}"
    assert report["device"] == {"kind": "ssh", "label": label, "emulated": False}
    assert row["device"]["label"] == label and row["device"]["machine"] == "x86_64"
    assert (row["runtime"], row["precision"], row["batch"], row["calls"]) == ("openvino", "fp32", 1, 12)
    assert 0 < row["median_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["peak_rss_mb"] > 0
    [timing] = read_bench(tmp_path / "bench.json")
    assert not timing.emulated and timing.median_ms == row["median_ms"]
    assert f"device {label}" in run.output
    sshd.assert_nothing_left()


def test_setup_installs_a_private_venv_and_reports_it(sshd: SshServer, tmp_path: Path) -> None:
    device = parse_device(sshd.spec(tmp_path / "device", python=None))
    assert device.python == f"{tmp_path}/device/venv/bin/python"
    messages: list[str] = []
    report = setup_device(device, [], log=messages.append)  # numpy only: the runtimes are large downloads
    assert report["installed"] == [f"numpy=={metadata.version('numpy')}"]
    assert report["packages"] == {"numpy": {"version": metadata.version("numpy"), "problem": None}}
    assert report["machine"] == "x86_64" and (tmp_path / "device" / "venv" / "bin" / "python").exists()
    assert any("pip install" in message for message in messages)
    sshd.assert_nothing_left()


def test_setup_command_checks_a_given_python(sshd: SshServer, tmp_path: Path) -> None:
    run = run_cli("device", "setup", "--device", sshd.spec(tmp_path), "--runtime", "openvino", "--json")
    assert run.exit_code == 0, run.output
    report = json.loads(run.stdout)
    assert report["ready"] == {"openvino": True} and report["installed"] == []
    assert report["packages"]["openvino"] == {"version": metadata.version("openvino"), "problem": None}

    missing = one_line_error(run_cli("device", "setup", "--device", sshd.spec(tmp_path, python="/nonexistent/python")))
    assert "/nonexistent/python: No such file or directory" in missing and "device setup" in missing


def test_an_unknown_host_key_is_refused(sshd: SshServer, tmp_path: Path, openvino_artifact: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text((sshd.directory / "ssh_config").read_text().replace(str(sshd.directory / "known_hosts"),
                                                                          str(tmp_path / "empty_known_hosts")))
    refused = one_line_error(run_cli("eval", "--device", sshd.spec(tmp_path, config=config), "--artifact",
                                     str(openvino_artifact)))
    assert "host key is unknown or changed" in refused and "Host key verification failed" in refused
    assert not (tmp_path / "empty_known_hosts").exists()


def test_device_specs_and_the_remote_command() -> None:
    device = parse_device("ssh://pi@raspberrypi:2222?python=~/venv/bin/python&config=/etc/lab_ssh_config")
    command = device.command([device.python, "-c", "print('a b')"])
    assert command[-1] == "exec \"$HOME\"/venv/bin/python -c 'print('\"'\"'a b'\"'\"')'"  # ~ is the device's home
    assert command[-3:-1] == ["pi@raspberrypi", "--"] and "BatchMode=yes" in command
    assert command[command.index("-p") + 1] == "2222" and command[command.index("-F") + 1] == "/etc/lab_ssh_config"
    assert "StrictHostKeyChecking=no" not in " ".join(command)
    assert parse_device("ssh://board").python == "~/.cache/lpmr-edge/venv/bin/python"
    assert (parse_device("ssh://board?runner=native").runner, parse_device("emu-arm64?runner=native").runner,
            parse_device("ssh://board").runner) == ("native", "native", None)
    for spec, problem in (("ssh://pi@board:port", "bad port"), ("ssh://board?pyhton=/x", "unknown option 'pyhton'"),
                          ("pi@board", "unknown device"), ("emu-arm64?python=/x", "unknown option 'python'"),
                          ("ssh://board?runner=rust", "unknown runner 'rust' in a device spec; use one of native, python")):
        with pytest.raises(UserError, match=problem):
            parse_device(spec)
