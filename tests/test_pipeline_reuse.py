"""`lpmr-edge run` does not run the same images twice through a runtime of the same identity: a second result
directory takes the first's per-sample outputs (byte for byte), scores the same metrics and says so."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories import small_suite_toml

from lpmr_edge.models import load_model
from lpmr_edge.runtimes.torch_runtime import TorchRuntime
from lpmr_edge.suite import EvalSettings, evaluate
from lpmr_edge.suite import run as run_module
from lpmr_edge.suite.config import load_suite
from lpmr_edge.suite.reuse import evaluate_reusing, same_outputs_result
from lpmr_edge.suite.run import metrics_of_same_outputs

SUITE = small_suite_toml(limit=120, corrupted_images=20)


def test_a_result_of_the_same_identity_gives_its_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "small.toml").write_text(SUITE)
    suite = str(tmp_path / "small.toml")
    results = tmp_path / "run" / "results"
    first, second = results / "x86" / "torch-fp32", results / "arm" / "torch-fp32"
    runtime = TorchRuntime(load_model("lpmr-tiny-fmnist"))
    evaluate(runtime, first, EvalSettings(suite=suite))

    assert same_outputs_result(results, runtime.identity, suite, first) is None  # not its own source
    assert same_outputs_result(results, "another identity", suite, second) is None
    assert same_outputs_result(results, runtime.identity, "quick", second) is None  # another suite
    assert same_outputs_result(results, runtime.identity, suite, second) == first

    ran, lines, scorings = runtime.call_seconds, [], []
    monkeypatch.setattr(run_module, "score_outputs", lambda *args: scorings.append(args))
    evaluate_reusing(runtime, second, first, suite, lines.append, None)
    assert runtime.call_seconds == ran, "the runtime ran again"
    assert not scorings, "the same outputs were scored again"  # the metrics are the source's
    assert lines == ["  suite: per-sample outputs of results/x86/torch-fp32 reused (same runtime identity)"]
    outputs = sorted(path.name for path in (first / "outputs").glob("*.npz"))
    assert outputs == sorted(path.name for path in (second / "outputs").glob("*.npz")) and len(outputs) == 3  # id, ood-digits, one corruption
    for name in outputs:
        assert (second / "outputs" / name).read_bytes() == (first / "outputs" / name).read_bytes(), name
    scored = [json.loads((directory / "metrics.json").read_text()) for directory in (first, second)]
    assert [{k: v for k, v in metrics.items() if k != "created"} for metrics in scored] == \
        [{k: v for k, v in scored[0].items() if k != "created"}] * 2
    reused = json.loads((second / "manifest.json").read_text())["reused_outputs"]
    assert reused["from"] == "results/x86/torch-fp32" and reused["sets"] == [name[:-4] for name in outputs]
    assert "reused_outputs" not in json.loads((first / "manifest.json").read_text())
    assert not [path for path in second.parent.iterdir() if path.name.startswith(".")], "staging left behind"

    # the metrics are taken only for the very outputs, suite and seed the source scored
    stored_suite = load_suite(suite)
    assert metrics_of_same_outputs(first, second, stored_suite, 0) == json.loads((first / "metrics.json").read_text())[
        "metrics"]
    assert metrics_of_same_outputs(first, second, stored_suite, 1) is None  # another seed
    changed = second / "outputs" / outputs[0]
    changed.write_bytes(changed.read_bytes() + b"\0")
    assert metrics_of_same_outputs(first, second, stored_suite, 0) is None  # one set's outputs differ


def test_an_export_another_target_makes_with_the_same_files_runs_after_it(tmp_path: Path):
    from lpmr_edge.pipeline import RunPlan, _Graph, _plan_graph
    from lpmr_edge.targets import load_target

    plan = RunPlan(model="lpmr-tiny-fmnist", targets=("x86", "arm"), out=tmp_path)
    graph = _Graph()
    _plan_graph(plan, [load_target(name) for name in plan.targets], graph, lambda line: None)
    exports = {step.name: step.after for step in graph.steps if step.name.startswith("export ")}
    # arm's ExecuTorch precisions and OpenVINO fp32/fp16 are x86's files, x86's OpenVINO bf16 its fp32 files;
    # nothing is exported twice
    assert {name: after for name, after in exports.items() if after} == {
        "export x86/openvino-bf16": ("export x86/openvino-fp32",),
        **{f"export arm/{name}": (f"export x86/{name}",)
           for name in ("executorch-fp32", "executorch-int8", "executorch-int8-dyn", "executorch-int4-w",
                        "openvino-fp32", "openvino-fp16")}}
    assert len(exports) == 16
    # their suites wait for x86's result of the same files (whose outputs they take); each suite is scored in
    # a one-thread step after it
    steps = {step.name: step for step in graph.steps}
    suites = {name: step.after for name, step in steps.items() if name.startswith("suite arm/")}
    assert {name: after[1:] for name, after in suites.items() if after[1:]} == {
        f"suite arm/{name}": (f"score x86/{name}",)
        for name in ("executorch-fp32", "executorch-int8", "executorch-int8-dyn", "executorch-int4-w",
                     "openvino-fp32", "openvino-fp16")}
    scores = {name: step for name, step in steps.items() if name.startswith("score ")}
    assert len(scores) == 16 and all(step.threads == 1 and step.after == (f"suite {name.split(' ', 1)[1]}",)
                                     for name, step in scores.items())
    # and their comparisons wait for x86's of the same files (which they take over when scored alike)
    assert {name: [after for after in step.after if after.startswith("compare ")] for name, step in steps.items()
            if name.startswith("compare arm/")} == {f"compare arm/{name}": [f"compare x86/{name}"] for name in (
                "executorch-int8", "executorch-int8-dyn", "executorch-int4-w", "openvino-fp16")}
    compares = [step.after for name, step in steps.items() if name.startswith("compare ")]
    assert compares and all(any(after.startswith("score ") for after in afters) and
                            not any(after.startswith("suite ") for after in afters) for afters in compares)
