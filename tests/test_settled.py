"""Evaluate until settled, wired into the suite: the shard loop on two torch stand-ins (in process), what
the results record, resume after a budget and after a crash in the middle of a shard, the objective
losses, the duration option; and (slow) `lpmr-edge run --until-settled` killed mid-shard and resumed."""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import target_toml

from lpmr_edge.errors import UserError
from lpmr_edge.metrics import classification_outcomes
from lpmr_edge.sequential import EvaluationRecord, SettleSettings, clipped_nll, shard_order
from lpmr_edge.suite import EvalSettings
from lpmr_edge.suite.settle import SETTLING_FILE, Candidate, Settled, evaluate_seen, settle
from lpmr_edge.suite.settle_plan import NLL_BOUND, objective_loss
from lpmr_edge.suite.sizes import sample_sizes

SETTINGS = EvalSettings(suite="basic", limit=400, batch_size=5)
SHARD = 10


@pytest.fixture(scope="module")
def models():
    from lpmr_edge.models import load_model

    return {"plain": load_model("lpmr-tiny-fmnist"), "spurious": load_model("lpmr-tiny-fmnist-spurious"),
            "random": load_model("random:lpmr-tiny-fmnist")}


class Crash(Exception):
    """Stands for a kill: raised by a runtime after a number of batches."""


def _candidates(models, root: Path, crash_after_batches: int | None = None) -> dict[str, Candidate]:
    from lpmr_edge.runtimes.torch_runtime import TorchRuntime

    runtimes = {name: TorchRuntime(model) for name, model in models.items()}
    if crash_after_batches is not None:
        spurious = runtimes["spurious"]
        original, calls = spurious.image_features, []

        def crashing(batch: np.ndarray) -> np.ndarray:
            calls.append(len(batch))
            if len(calls) > crash_after_batches:
                raise Crash
            return original(batch)

        spurious.image_features = crashing
    return {name: Candidate(runtime, root / name) for name, runtime in runtimes.items()}


def _settle(models, root: Path, deadline: float | None = None, crash_after_batches: int | None = None,
            settings: EvalSettings = SETTINGS, objective: str = "accuracy", shard: int = SHARD) -> Settled:
    return settle(_candidates(models, root, crash_after_batches), root / SETTLING_FILE,
                  settings, objective, 0.005,
                  SettleSettings(shard_size=shard, deadline=deadline), log=lambda _: None)


def _stored(root: Path) -> dict:
    return json.loads((root / SETTLING_FILE).read_text())


@pytest.fixture(scope="module")
def uninterrupted(models, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settled, Path]:
    root = tmp_path_factory.mktemp("uninterrupted")
    return _settle(models, root), root


def test_settling_visits_the_seeded_order_and_stops_settled_or_when_the_images_run_out(uninterrupted):
    settled, root = uninterrupted
    record = settled.record
    assert settled.stopped in ("settled", "images")
    assert (settled.stopped == "settled") == settled.decision.settled
    order = shard_order(400, 0)
    assert [i for shard in record.shards for i in shard["indices"]] == order[:record.position].tolist()
    assert all(len(shard["indices"]) == SHARD for shard in record.shards)
    if settled.stopped == "images":
        assert record.position == 400
    # the stored record is the one returned, and each shard's features are on disk for each candidate it names
    assert EvaluationRecord.from_json(_stored(root)["records"]["id"]) == record
    assert _stored(root)["decision"] == settled.decision.describe()
    for number, shard in enumerate(record.shards):
        for name in ("plain", "spurious", "random"):
            assert (root / name / "settling" / "id" / f"shard-{number:05d}.npy").is_file() == (name in shard["candidates"])


def test_settled_candidates_stop_being_evaluated_and_the_best_is_recommended(uninterrupted):
    settled, _ = uninterrupted
    record = settled.record
    assert settled.stopped == "settled"
    # the stand-in trained on coloured backgrounds and random weights are worse on plain images
    assert settled.decision.states() == {"plain": "recommended", "spurious": "worse", "random": "worse"}
    images = settled.describe()["images"]
    assert images["plain"] == images["spurious"] == record.position and images["random"] < record.position
    random_shards = [shard["candidates"] for shard in record.shards]
    stopped_at = next(k for k, names in enumerate(random_shards) if "random" not in names)
    assert all("random" not in names for names in random_shards[stopped_at:])
    assert "settled at 95% on top-1 error: recommended plain (spurious worse, random worse); images seen, id of 400: " \
        in settled.summary()


def test_each_suite_covers_the_images_its_candidate_saw_and_says_it_was_sequential(uninterrupted, models):
    settled, root = uninterrupted
    candidates = _candidates(models, root)
    result = evaluate_seen(settled, "plain", candidates["plain"], SETTINGS)
    seen = settled.record.seen("plain")
    assert result["n"] == len(seen) == result["metrics"]["accuracy"]["n"]
    assert result["metrics"]["sequential"] == settled.sequential("plain")
    assert result["metrics"]["sequential"]["state"] == "recommended"
    sizes = sample_sizes(result["metrics"])
    assert sizes["id"]["n"] == len(seen)
    assert sizes["sequential"] == {"images": len(seen), "of": 400, "stopped": settled.stopped}
    # the ID outputs are the shard features, in visiting order, and score like a fresh run on those images
    stored = np.load(root / "plain" / "outputs" / "id.npz")
    shard_features = np.concatenate([np.load(root / "plain" / "settling" / "id" / f"shard-{k:05d}.npy")
                                     for k in range(len(settled.record.shards))])
    np.testing.assert_array_equal(stored["features"], shard_features)
    correct = classification_outcomes(result["logit_scale"] * _cosine(stored), stored["labels"])["correct"]
    assert result["metrics"]["accuracy"]["top1"] == pytest.approx(correct.mean())


def _cosine(stored) -> np.ndarray:
    from lpmr_edge.zeroshot import cosine_similarities

    return cosine_similarities(stored["features"], stored["class_embeddings"])


def test_a_spent_budget_stops_after_one_shard_and_the_same_command_continues_to_the_same_end(
        uninterrupted, models, tmp_path: Path):
    spent = _settle(models, tmp_path, deadline=0.0)
    assert spent.stopped == "budget" and len(spent.record.shards) == 1
    assert "not settled (budget spent; undecided: spurious, random)" in spent.summary()
    first_shard = tmp_path / "plain" / "settling" / "id" / "shard-00000.npy"
    before = first_shard.stat().st_mtime_ns
    resumed = _settle(models, tmp_path)
    assert first_shard.stat().st_mtime_ns == before, "a recorded shard was evaluated again"
    settled, _ = uninterrupted
    assert resumed.record == settled.record
    assert resumed.decision.to_json() == settled.decision.to_json()


def test_a_crash_in_the_middle_of_a_shard_redoes_only_that_shard(uninterrupted, models,
                                                                 tmp_path: Path):
    # the second candidate crashes in its second shard after the first candidate finished that shard
    with pytest.raises(Crash):
        _settle(models, tmp_path, crash_after_batches=SHARD // SETTINGS.batch_size + 1)
    record = EvaluationRecord.from_json(_stored(tmp_path)["records"]["id"])
    assert len(record.shards) == 1
    assert (tmp_path / "plain" / "settling" / "id" / "shard-00001.npy").is_file()  # the interrupted shard's partial work
    recorded = {name: (tmp_path / name / "settling" / "id" / "shard-00000.npy").stat().st_mtime_ns
                for name in ("plain", "spurious", "random")}
    resumed = _settle(models, tmp_path)
    assert {name: (tmp_path / name / "settling" / "id" / "shard-00000.npy").stat().st_mtime_ns
            for name in ("plain", "spurious", "random")} == recorded
    settled, _ = uninterrupted
    assert resumed.record == settled.record
    assert resumed.decision.to_json() == settled.decision.to_json()


def test_a_record_made_for_other_inputs_is_started_over(uninterrupted, models, tmp_path: Path):
    _settle(models, tmp_path, deadline=0.0)
    other = settle(_candidates(models, tmp_path), tmp_path / SETTLING_FILE,
                   SETTINGS, "nll", 0.01,
                   SettleSettings(shard_size=SHARD, deadline=0.0), log=lambda _: None)
    assert len(other.record.shards) == 1 and other.loss.name == f"NLL clipped at {NLL_BOUND:g}"
    assert _stored(tmp_path)["decision"] == other.decision.describe()


def test_objectives_map_to_bounded_per_image_losses():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(0, 5, (200, 10)), rng.integers(0, 10, 200)
    outcomes = classification_outcomes(logits, labels)
    np.testing.assert_array_equal(objective_loss("accuracy").loss(outcomes), 1 - outcomes["correct"])
    np.testing.assert_array_equal(objective_loss("ece").loss(outcomes), outcomes["brier"])
    np.testing.assert_allclose(objective_loss("nll").loss(outcomes),
                               clipped_nll(np.exp(-outcomes["nll"]), NLL_BOUND))
    for name in ("accuracy", "ece", "nll"):
        losses = objective_loss(name).loss(outcomes)
        assert losses.min() >= 0 and losses.max() <= objective_loss(name).bound
    for objective in ("fpr95", "worst-group:1", "ece:digits"):
        with pytest.raises(UserError, match="--until-settled"):
            objective_loss(objective)
    assert (objective_loss("auroc:worst").combine, objective_loss("auroc").combine) == ("worst", "mean")
    assert objective_loss("auroc:digits").instance == "digits" and objective_loss("worst-group").feeds == "spurious"


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("45", 45)])
def test_budget_durations(text: str, seconds: float):
    from lpmr_edge.cli.params import DURATION

    assert DURATION.parse(text) == seconds


@pytest.mark.parametrize("text", ["0s", "soon", "30x", "1h 30m", ""])
def test_bad_budget_durations_are_one_line_errors(text: str):
    from lpmr_edge.cli.params import DURATION

    with pytest.raises(ValueError, match="duration"):
        DURATION.parse(text)


def test_budget_without_until_settled_and_objectives_without_a_loss_are_refused(monkeypatch, capsys, tmp_path: Path):
    from factories import run_cli

    status, _, err = run_cli(monkeypatch, capsys, "eval", "--budget", "30m", "--limit", "8")
    assert status == 2 and "add --until-settled" in err
    status, _, err = run_cli(monkeypatch, capsys, "run", "--until-settled", "--objective", "fpr95",
                             "--out", str(tmp_path / "unused"))
    assert status == 2 and "use --objective accuracy | ece | nll | auroc" in err
    assert not (tmp_path / "unused").exists()


SMALL_SUITE = "limit = 600\nbootstrap_resamples = 50\n"


@pytest.mark.slow
def test_run_until_settled_killed_in_the_middle_of_a_shard_resumes_to_the_uninterrupted_end(tmp_path: Path):
    from lpmr_edge.runtimes.factory import open_runtime

    (tmp_path / "tiny.toml").write_text(target_toml(
        "tiny-x86", "test target: OpenVINO fp32/int8", platform.machine(), threads=1, batch=8,
        precisions={"openvino": ["fp32", "int8"]}))
    (tmp_path / "small.toml").write_text(SMALL_SUITE)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "lpmr_edge", "run", "--model", "lpmr-tiny-fmnist", "--target",
               str(tmp_path / "tiny.toml"), "--suite", str(tmp_path / "small.toml"), "--out", str(out),
               "--objective", "accuracy", "--until-settled", "--shard-size", "50", "--json"]
    results = out / "results" / "tiny-x86"
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)

    def recorded() -> int:
        try:
            return len(json.loads((results / SETTLING_FILE).read_text())["records"]["id"]["shards"])
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    deadline = time.monotonic() + 600
    while True:  # kill once the first candidate has finished a shard the record does not hold yet
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline, "no shard in progress was seen"
        shards = recorded()
        if shards and (results / "openvino-fp32" / "settling" / "id" / f"shard-{shards:05d}.npy").is_file():
            break
        time.sleep(0.01)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = recorded()
    assert (results / "openvino-fp32" / "settling" / "id" / f"shard-{killed_at:05d}.npy").is_file(), \
        "the run was not killed in the middle of a shard"
    done_shards = {path: path.stat().st_mtime_ns for name in ("openvino-fp32", "openvino-int8")
                   for path in (results / name / "settling").glob("*/shard-*.npy")
                   if int(path.stem.split("-")[1]) < killed_at}

    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    assert finished.returncode == 0, finished.stderr
    assert f"settling: resumed after {killed_at} shard(s)" in finished.stderr
    assert {path: path.stat().st_mtime_ns for path in done_shards} == done_shards, "a recorded shard was redone"
    summary = json.loads(finished.stdout)
    sequential = summary["sequential"]["tiny-x86"]
    assert sequential["stopped"] in ("settled", "images")
    (choice,) = summary["recommendations"]  # the picker follows the settling decision
    assert choice["reason"].startswith("evaluation until settled on top-1 error")
    assert sequential["candidates"][Path(choice["recommended"]["results_dir"]).name]["state"] in (
        "recommended", "equivalent")
    stored = json.loads((results / SETTLING_FILE).read_text())
    record = EvaluationRecord.from_json(stored["records"]["id"])
    assert [i for shard in record.shards for i in shard["indices"]] == shard_order(600, 0)[:record.position].tolist()
    for name in ("openvino-fp32", "openvino-int8"):
        metrics = json.loads((results / name / "metrics.json").read_text())["metrics"]
        assert metrics["accuracy"]["n"] == len(record.seen(name)) == metrics["sequential"]["images"]

    # the same artifacts settled without interruption, in process: the same record and decision
    runtimes = {name: open_runtime(artifact=out / "artifacts" / "tiny-x86" / name, threads=1)
                for name in ("openvino-fp32", "openvino-int8")}
    try:
        fresh = settle({name: Candidate(runtime, tmp_path / "fresh" / name) for name, runtime in runtimes.items()},
                       tmp_path / "fresh" / SETTLING_FILE, EvalSettings(suite=str(tmp_path / "small.toml")),
                       "accuracy", 0.005, SettleSettings(shard_size=50), log=lambda _: None)
    finally:
        for runtime in runtimes.values():
            runtime.close()
    assert fresh.record == record
    assert fresh.describe() == sequential


def _add_sequential(directory: Path, state: str, objective: str = "accuracy") -> None:
    path = directory / "metrics.json"
    raw = json.loads(path.read_text())
    raw["metrics"]["sequential"] = {"rule": "PrPl-EB", "objective": objective, "loss": "top-1 error",
                                    "stopped": "budget", "state": state, "images": 200, "of": 400, "seed": 0,
                                    "confidence": 0.95, "margin": 0.005}
    path.write_text(json.dumps(raw))


def test_pick_ties_results_of_a_settled_evaluation_as_the_settling_decision_says(tmp_path: Path):
    from factories import write_outputs_result

    from lpmr_edge.pick import Constraints, pick
    from lpmr_edge.results import load_results

    labels = np.arange(200) % 10
    # identical outputs: the fixed-n paired test ties all three, and the fastest (executorch int8) would win
    states = {("openvino", "fp32", 10): "recommended", ("openvino", "int8", 6): "equivalent",
              ("executorch", "int8", 3): "worse"}
    for (runtime, precision, latency), state in states.items():
        _add_sequential(write_outputs_result(tmp_path, "x86", runtime, precision, labels, labels,
                                             latency_ms=latency), state)
    (settled,) = pick(load_results([tmp_path]), Constraints(objective="accuracy"))
    assert settled.recommended.variant == "openvino int8"
    assert settled.reason.startswith("evaluation until settled on top-1 error")
    assert "executorch int8 worse (200 images)" in settled.reason and "not settled: the budget ran out" in settled.reason
    (fixed_n,) = pick(load_results([tmp_path]), Constraints(objective="ece"))  # settled on another objective
    assert fixed_n.recommended.variant == "executorch int8"


OOD_SUITE = "limit = 300\nbootstrap_resamples = 50\n[ood]\nsets = [\"digits\"]\n"
GROUPS_SUITE = "limit = 300\nbootstrap_resamples = 50\n[spurious]\nmin_group_size = 2\n"
OOD_SHARD = 50  # two batches of each set per shard


def _suite_settings(tmp_path_factory: pytest.TempPathFactory, text: str) -> EvalSettings:
    path = tmp_path_factory.mktemp("suite") / "suite.toml"
    path.write_text(text)
    return EvalSettings(suite=str(path), batch_size=25)


@pytest.fixture(scope="module")
def ood_settings(tmp_path_factory: pytest.TempPathFactory) -> EvalSettings:
    return _suite_settings(tmp_path_factory, OOD_SUITE)


@pytest.fixture(scope="module")
def ood_uninterrupted(models, ood_settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settled, Path]:
    root = tmp_path_factory.mktemp("ood")
    return _settle(models, root, settings=ood_settings, objective="auroc:worst", shard=OOD_SHARD), root


def test_an_ood_objective_visits_each_ood_set_in_its_own_seeded_order_with_one_stratum_per_set(ood_uninterrupted):
    from lpmr_edge.suite.settle_plan import set_seed

    settled, root = ood_uninterrupted
    assert settled.decision.strata == ["digits", "class-split"] and settled.decision.combine == "worst"
    assert set(settled.records) == {"id", "ood-digits"}
    for set_name, record in settled.records.items():
        assert record.seed == set_seed(0, set_name) and record.n_images == 300
        visited = [i for shard in record.shards for i in shard["indices"]]
        assert visited == shard_order(300, record.seed)[:record.position].tolist()
        for number, shard in enumerate(record.shards):
            for name in ("plain", "spurious", "random"):
                assert (root / name / "settling" / set_name / f"shard-{number:05d}.npy").is_file() == \
                    (name in shard["candidates"])
    assert settled.stopped in ("settled", "images")
    # the randomly initialised model detects nothing: its worst-set AUROC loss is certainly larger
    assert settled.decision.states()["random"] == "worse"
    described = settled.describe()
    assert described["sets"]["plain"]["ood-digits"] == {"images": len(settled.records["ood-digits"].seen("plain")),
                                                        "of": 300}
    assert set(described["candidates"]["plain"]["paired_samples"]) == {"digits", "class-split"}


def test_each_suite_covers_the_ood_images_its_candidate_saw(ood_uninterrupted, models, ood_settings):
    settled, root = ood_uninterrupted
    result = evaluate_seen(settled, "plain", _candidates(models, root)["plain"], ood_settings)
    seen = settled.seen("plain")
    metrics = result["metrics"]
    assert metrics["ood"]["sets"]["digits"]["n"] == len(seen["ood-digits"])
    assert metrics["ood"]["sets"]["digits"]["id_n"] == metrics["accuracy"]["n"] == len(seen["id"])
    assert sample_sizes(metrics)["ood"]["digits"] == len(seen["ood-digits"])
    assert metrics["sequential"]["sets"] == {"ood-digits": {"images": len(seen["ood-digits"]), "of": 300}}
    stored = np.load(root / "plain" / "outputs" / "ood-digits.npz")
    np.testing.assert_array_equal(stored["features"], np.concatenate(
        [np.load(root / "plain" / "settling" / "ood-digits" / f"shard-{k:05d}.npy")
         for k, shard in enumerate(settled.records["ood-digits"].shards) if "plain" in shard["candidates"]]))


def test_an_ood_settling_killed_in_the_middle_of_a_shard_resumes_to_the_uninterrupted_end(
        ood_uninterrupted, models, ood_settings, tmp_path: Path):
    # per shard and candidate: 2 batches of ID images, then 2 of digits; the second candidate crashes in its
    # second shard after its ID part (the first candidate finished that shard)
    with pytest.raises(Crash):
        _settle(models, tmp_path, crash_after_batches=7, settings=ood_settings, objective="auroc:worst",
                shard=OOD_SHARD)
    stored = {name: EvaluationRecord.from_json(data) for name, data in _stored(tmp_path)["records"].items()}
    assert [len(record.shards) for record in stored.values()] == [1, 1]
    assert (tmp_path / "spurious" / "settling" / "id" / "shard-00001.npy").is_file()
    assert not (tmp_path / "spurious" / "settling" / "ood-digits" / "shard-00001.npy").is_file()
    recorded = {path: path.stat().st_mtime_ns for path in tmp_path.glob("*/settling/*/shard-00000.npy")}
    assert len(recorded) == 6
    resumed = _settle(models, tmp_path, settings=ood_settings, objective="auroc:worst", shard=OOD_SHARD)
    assert {path: path.stat().st_mtime_ns for path in recorded} == recorded, "a recorded shard was redone"
    settled, _ = ood_uninterrupted
    assert resumed.records == settled.records
    assert resumed.decision.to_json() == settled.decision.to_json()


def test_worst_group_visits_the_group_set_with_one_stratum_per_group(models, tmp_path_factory, tmp_path: Path):
    settings = _suite_settings(tmp_path_factory, GROUPS_SUITE)
    settled = _settle(models, tmp_path, settings=settings, objective="worst-group", shard=OOD_SHARD,
                      deadline=0.0)
    grouped = settled.plan.sets["spurious"].dataset
    assert settled.decision.strata == [str(g) for g in np.unique(grouped.groups)]
    assert settled.stopped == "budget" and [len(r.shards) for r in settled.records.values()] == [1, 1]
    seen = settled.records["spurious"].seen("plain")
    samples = settled.describe()["candidates"]["plain"]["paired_samples"]
    assert sum(samples.values()) == len(seen) == OOD_SHARD
    assert samples == {str(g): int(np.sum(grouped.groups[seen] == g)) for g in np.unique(grouped.groups)}
    result = evaluate_seen(settled, "plain", _candidates(models, tmp_path)["plain"], settings)
    assert result["metrics"]["spurious"]["n"] == OOD_SHARD and result["metrics"]["accuracy"]["n"] == OOD_SHARD


def test_a_reference_covers_the_longest_prefix_of_each_visited_set(ood_uninterrupted):
    from lpmr_edge.suite.settle import reference_images

    settled, _ = ood_uninterrupted
    shorter = {name: EvaluationRecord(record.n_images, record.seed, record.shards[:1])
               for name, record in settled.records.items()}
    covered = reference_images([shorter, settled.records])
    assert covered["id_indices"] == shard_order(300, 0)[:settled.records["id"].position].tolist()
    digits = settled.records["ood-digits"]
    assert covered["subsets"] == {"ood-digits": shard_order(300, digits.seed)[:digits.position].tolist()}
    assert covered["sequential"]["sets"] == {"ood-digits": {"images": digits.position, "of": 300}}
    assert reference_images([shorter])["sequential"]["images"] == len(shorter["id"].shards[0]["indices"])


def test_an_id_objective_also_visits_the_ood_sets_shard_by_shard(models, ood_settings, tmp_path: Path):
    settled = _settle(models, tmp_path, settings=ood_settings, objective="accuracy", shard=OOD_SHARD, deadline=0.0)
    assert settled.decision.strata == [""] and settled.stopped in ("settled", "budget")
    assert {name: len(record.shards) for name, record in settled.records.items()} == {"id": 1, "ood-digits": 1}
    result = evaluate_seen(settled, "plain", _candidates(models, tmp_path)["plain"], ood_settings)
    ood = result["metrics"]["ood"]["sets"]
    assert ood["digits"]["n"] == result["metrics"]["accuracy"]["n"] == OOD_SHARD
    assert ood["class-split"]["n"] + ood["class-split"]["id_n"] == OOD_SHARD  # the ID images' halves
