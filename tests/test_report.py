"""The report from synthetic results: files, report.json content, atomic replacement, and a real headless browser."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import run_cli, write_outputs_result, write_synthetic_result

from lpmr_edge import plots
from lpmr_edge.errors import UserError
from lpmr_edge.pick import Constraints
from lpmr_edge.report import HTML_FILE, JSON_FILE, MARKDOWN_FILE, PLOTS_DIR, write_report

CHROMIUM = Path("/usr/bin/chromium")
# Collects page errors (script and resource) and, on load, writes what the page rendered into the DOM.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.src) || e)), true);
window.addEventListener("load", () => {
  const check = document.createElement("pre");
  check.id = "__check";
  check.textContent = JSON.stringify({
    errors: window.__errors, scripts: document.scripts.length,
    images: Array.from(document.images).map(i => ({src: i.src.slice(0, 22), complete: i.complete,
                                                   width: i.naturalWidth, height: i.naturalHeight})),
    headings: Array.from(document.querySelectorAll("h1, h2")).map(h => h.textContent),
    firstTable: (document.querySelector("table") || {}).innerText || ""});
  document.body.appendChild(check);
});
</script>"""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x86 (measured): fp32, int8 (better calibration/OOD/noise/shift, worse accuracy and worst group) and
    int4-w (worse accuracy and ECE); arm (emulated timings): fp32 and an unchanged int8; the host's torch."""
    root = tmp_path_factory.mktemp("results")
    write_synthetic_result(root, "host", "torch", "fp32", latency_ms=None)
    write_synthetic_result(root, "x86", "openvino", "fp32", latency_ms=10, size_mb=100)
    write_synthetic_result(root, "x86", "openvino", "int8", latency_ms=3, size_mb=26, top1=0.79, ece=0.03, auroc=0.93,
                 corrupted=0.63, shifted=0.52, worst_group=0.22)
    write_synthetic_result(root, "x86", "openvino", "int4-w", latency_ms=4, size_mb=14, top1=0.75, ece=0.07,
                 warnings=("image tower: INFERENCE_PRECISION_HINT f16 was requested but bf16 executes",))
    write_synthetic_result(root, "arm", "executorch", "fp32", latency_ms=900, emulated=True)
    write_synthetic_result(root, "arm", "executorch", "int8", latency_ms=400, emulated=True, size_mb=26)
    return root


@pytest.fixture(scope="module")
def report_dir(results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report"
    write_report([results], out, Constraints(objective="ece"))
    return out


def test_report_writes_html_markdown_json_and_plots(report_dir: Path):
    report = json.loads((report_dir / JSON_FILE).read_text())
    files = [name for entry in report["plots"] for name in entry["files"].values()]
    assert sorted(files) == sorted(path.name for path in (report_dir / PLOTS_DIR).iterdir())
    assert {entry["target"]: set(entry["files"]) for entry in report["plots"]} == {
        "x86": {"tradeoff", "reliability", "severity"}, "arm": {"reliability", "severity"}, "host": {"severity"}}
    assert "only emulated timings" in next(e for e in report["plots"] if e["target"] == "arm")["missing"]["tradeoff"]
    html = (report_dir / HTML_FILE).read_text()
    assert html.count('<img src="data:image/png;base64,') == len(files)
    assert not re.search(r"<script|<link|https?://", html), "the page must not load anything"
    markdown = (report_dir / MARKDOWN_FILE).read_text()
    assert all(f"]({PLOTS_DIR}/{name})" in markdown for name in files)
    assert "| x86 | openvino int8 |" in markdown and "not a pretrained CLIP" in markdown
    for page in (html, markdown):  # sizes beside every metric, corrected claim verdicts with their counts
        assert "n=500" in page and "ID 500 vs digits" in page and "Holm-corrected together" in page
        assert "mixed" in page and "1 of 3 better beyond the margin, 1 worse, 0 equivalent within it" in page
        assert "lies wholly beyond the margin" in page and "TOST at 5%" in page  # the claim rule is stated


def test_report_json_has_tables_deltas_and_claim_verdicts(report_dir: Path):
    report = json.loads((report_dir / JSON_FILE).read_text())
    tables = {table["target"]: {row["variant"]: row for row in table["rows"]} for table in report["tables"]}
    assert [table["target"] for table in report["tables"]] == ["arm", "x86", "host"]
    int8 = tables["x86"]["openvino int8"]
    assert int8["reference"] == "openvino fp32" and int8["latency_ms"] == 3 and int8["size_mb"] == 26
    assert int8["metrics"]["ece"]["value"] == 0.03 and int8["metrics"]["ece"]["ci"] == pytest.approx([0.025, 0.035])
    ece_delta = int8["metrics"]["ece"]["delta"]
    assert ece_delta["value"] == pytest.approx(-0.02) and ece_delta["significant"] and ece_delta["better"]
    assert not tables["x86"]["openvino int4-w"]["metrics"]["nll"]["delta"]["significant"]
    assert "delta" not in tables["x86"]["openvino fp32"]["metrics"]["ece"]
    assert tables["arm"]["executorch int8"]["latency_emulated"] is True
    assert tables["arm"]["executorch int8"]["device"] == "emu-arm64 (aarch64, emulated)"
    assert tables["x86"]["openvino int8"]["device"] == "host (x86_64)"
    assert report["provenance"]["devices"] == ["emu-arm64 (aarch64, emulated)", "host (x86_64)"]
    warnings = {table["target"]: table["warnings"] for table in report["tables"]}
    assert warnings == {"arm": [], "host": [],
                        "x86": ["image tower: INFERENCE_PRECISION_HINT f16 was requested but bf16 executes"]}
    verdicts = {claim["claim"]: claim["verdict"] for claim in report["claims"]}
    assert verdicts == {"accuracy": "does not hold", "calibration": "mixed", "ood": "holds", "noise": "holds",
                        "covariate_shift": "does not hold", "spurious": "holds"}
    calibration = next(claim for claim in report["claims"] if claim["claim"] == "calibration")
    # int8 lowers ECE by 0.02 and int4-w raises it by 0.02 (CIs wholly beyond the 0.005 margin); arm int8 is
    # unchanged but its 90% CI (±0.0059) is wider than the margin: undecided, not equivalent.
    assert calibration["counts"] == {"compared": 3, "better": 1, "worse": 1, "equivalent": 0, "undecided": 1,
                                     "duplicates": 0}
    assert calibration["summary"] == "1 of 3 better beyond the margin, 1 worse, 0 equivalent within it (margin ±0.005)"
    assert calibration["margin"] == 0.005 and "two one-sided tests against the margin at 2.5%" in calibration["rule"]
    # int8's top-1 drop of 1 pp has a CI excluding 0 but not the 0.5 pp margin: only int4-w's 5 pp drop counts.
    accuracy = next(claim for claim in report["claims"] if claim["claim"] == "accuracy")
    assert accuracy["counts"]["worse"] == 1 and accuracy["counts"]["undecided"] == 2
    assert next(e for e in accuracy["evidence"] if e["variant"] == "openvino int8")["delta"]["significant"]
    assert calibration["correction"] == "Holm-corrected within the claim, alpha 0.05"
    assert {(e["target"], e["variant"], e["significant"]) for e in calibration["evidence"]} == {
        ("x86", "openvino int8", True), ("x86", "openvino int4-w", True), ("arm", "executorch int8", False)}
    assert all(e["p_adjusted"] >= e["p_value"] for e in calibration["evidence"])
    assert int8["metrics"]["ece"]["sample_size"] == "n=500" and int8["sizes"]["id"] == {"n": 500, "of": None}
    picks = {choice["target"]: choice for choice in report["recommendations"]}
    assert set(picks) == {"x86", "arm"} and picks["x86"]["recommended"]["variant"] == "openvino int8"
    assert report["provenance"]["models"] == [{"spec": "lpmr-tiny-fmnist",
                                               "label": "stand-in trained by lpmr-edge, not a pretrained CLIP"}]


def test_failed_report_keeps_the_previous_one(results: Path, report_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "report"
    shutil.copytree(report_dir, out)
    before = {path.name: path.read_bytes() for path in out.rglob("*") if path.is_file()}

    def broken(*args: Any) -> bytes:
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(plots, "severity_figure", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_report([results], out)
    assert {path.name: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["report"]  # no staging directory left behind
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(UserError, match="is not an lpmr-edge report"):
        write_report([results], tmp_path / "notes")
    with pytest.raises(UserError, match="contains the input result"):
        write_report([results / "x86"], results)


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           *args], check=False, capture_output=True, text=True, timeout=120)


def _rendered(page: Path, profile: Path) -> tuple[dict[str, Any], str]:
    """Load ``page`` with the probe injected; returns what the probe saw and chromium's stderr."""
    probed = page.with_name("probed-" + page.name)
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    run = _chromium("--dump-dom", probed.as_uri(), profile=profile)
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r'<pre id="__check">(.*?)</pre>', run.stdout, re.DOTALL)
    assert found, "the probe did not run: " + run.stdout[-500:]
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")), run.stderr


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (make browser installs it)")
def test_report_renders_in_headless_chromium(report_dir: Path, tmp_path: Path):
    # The probe catches what it must catch: a failing script and a broken image.
    broken = tmp_path / "broken.html"
    broken.write_text("<html><head></head><body><img src='missing.png'><script>nope()</script></body></html>")
    seen, stderr = _rendered(broken, tmp_path / "profile")
    assert len(seen["errors"]) == 2 and seen["images"][0]["width"] == 0 and "Uncaught" in stderr

    page = tmp_path / HTML_FILE
    shutil.copy(report_dir / HTML_FILE, page)
    seen, stderr = _rendered(page, tmp_path / "profile")
    figures = len(list((report_dir / PLOTS_DIR).iterdir()))
    assert seen["errors"] == [] and "CONSOLE" not in stderr and seen["scripts"] == 1  # only the probe
    assert len(seen["images"]) == figures
    assert all(image["src"] == "data:image/png;base64," and image["complete"] and image["width"] > 400
               and image["height"] > 300 for image in seen["images"]), seen["images"]
    assert seen["headings"][:3] == ["lpmr-edge report: lpmr-tiny-fmnist", "Recommendation",
                                    "Does quantization help here?"]
    assert "openvino int8" in seen["firstTable"] and "arm" in seen["firstTable"]

    screenshot = tmp_path / "report.png"
    run = _chromium("--hide-scrollbars", "--window-size=1400,2000", f"--screenshot={screenshot}", page.as_uri(),
                    profile=tmp_path / "profile")
    assert run.returncode == 0 and screenshot.stat().st_size > 50_000  # a rendered page, not a blank one


def test_cli_report_applies_the_constraints(results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture):
    status, out, err = run_cli(monkeypatch, capsys, "report", str(results), "--out", str(tmp_path / "r"),
                               "--objective", "accuracy", "--max-latency-ms", "3.5", "--json")
    assert status == 0, err
    summary = json.loads(out)
    picks = {choice["target"]: choice["recommended"] for choice in summary["recommendations"]}
    assert picks["x86"]["variant"] == "openvino int8" and picks["arm"] is None  # arm: emulated timings only
    assert summary["claims"]["calibration"] == "mixed" and Path(summary["report"]).is_file()


def test_identical_outputs_count_once_and_accuracy_claims_use_mcnemar(tmp_path: Path):
    # x86 and arm hold byte-identical outputs (arm artifacts evaluated on the host): one piece of evidence.
    labels = np.arange(600) % 10
    reference = np.where(np.arange(600) < 480, labels, (labels + 1) % 10)
    quantized = reference.copy()
    quantized[:30] = (labels[:30] + 1) % 10  # 30 fewer right answers, none gained
    for target in ("x86", "arm"):
        write_outputs_result(tmp_path / "results", target, "executorch", "fp32", reference, labels)
        write_outputs_result(tmp_path / "results", target, "executorch", "int8", quantized, labels)
    report = write_report([tmp_path / "results"], tmp_path / "report", Constraints(objective="accuracy"))
    accuracy = next(claim for claim in report["claims"] if claim["claim"] == "accuracy")
    assert accuracy["verdict"] == "does not hold"
    assert accuracy["counts"] == {"compared": 1, "better": 0, "worse": 1, "equivalent": 0, "undecided": 0,
                                  "duplicates": 1}
    kept, duplicate = sorted(accuracy["evidence"], key=lambda e: e["duplicate_of"] is not None)
    assert duplicate["duplicate_of"].startswith(f"{kept['target']} ") and duplicate["p_adjusted"] is None
    # the claim tests the 5 pp drop against the 0.5 pp margin (paired bootstrap); McNemar stays beside it
    assert kept["test"] == "paired bootstrap on the same samples: tests against the margin ±0.5 pp"
    assert kept["p_value"] == kept["delta"]["p_beyond_margin"] < 0.05 and kept["delta"]["margin"] == 0.005
    assert kept["delta"]["mcnemar_p"] == pytest.approx(2 * 0.5 ** 30) and kept["delta"]["p_value"] < 0.05
    markdown = (tmp_path / "report" / MARKDOWN_FILE).read_text()
    assert "identical outputs to" in markdown and "counted once" in markdown and "McNemar p=" in markdown
    choice = report["recommendations"][0]
    assert "TOST" in choice["reason"] and "margin ±0.5 pp" in choice["reason"]
