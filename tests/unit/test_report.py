import base64
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from flows.stages import Stages
from tasks.common import keys
from tasks.common.config import RunConfig
from tasks.measure.loadgen import LoadResult, Sample
from tasks.measure.results import BenchmarkResult
from tasks.report.events import run_page
from tasks.report.provenance import git_state, instance_type, provenance
from tasks.report.run_summary import Provenance
from tasks.report.summary import markdown, new_run_dir, pictures, run_config_rows
from tasks.serve.clients import Prediction
from tasks.verify.checks import CheckResult
from tests.nights import summary as summary_of


def _ran(names=("trace", "check", "stop"), fail=None):
    stages = Stages(list(names))
    for name in names:
        if name == fail:
            with pytest.raises(RuntimeError):
                with stages.run(name):
                    raise RuntimeError(f"{name} broke")
            break
        with stages.run(name):
            pass
    return stages


def _bench(latencies_s: list[float], errors: int, concurrency: int, seconds: float) -> BenchmarkResult:
    """A benchmark result from answered latencies and errors, as the load generator records them."""
    samples = [Sample(0.0, 0.0, s, True) for s in latencies_s] + [Sample(0.0, 0.0, 0.1, False)] * errors
    return BenchmarkResult.from_load(LoadResult("closed", concurrency, None, seconds, samples))


def _check(passed):
    prediction = Prediction(
        seq_0="a", seq_1="b", expected="paraphrase", answer="paraphrase", status_code=200, latency_ms=3.0
    )
    return CheckResult(name="tutorial", passed=passed, detail="6/6" if passed else "3/6", predictions=[prediction])


def test_summary_ok_when_all_stages_and_checks_pass(tmp_path):
    summary = summary_of(_ran(), [_check(True)], _bench([0.1], 0, 1, 1.0), run_dir=tmp_path)
    assert summary.status == "ok"
    assert {"python", "torch", "transformers", "torchserve", "prefect"} <= set(summary.versions)
    on_disk = json.loads(summary.write(tmp_path).read_text())
    assert on_disk["config"] == RunConfig().model_dump(mode="json") and on_disk["run_dir"] == str(tmp_path)
    assert on_disk["benchmark"]["requests"] == 1
    # Predictions go to their own artifact, not into the summary.
    assert "predictions" not in on_disk["checks"][0]


def test_summary_failed_when_a_stage_failed():
    summary = summary_of(_ran(fail="check"))
    assert summary.status == "failed"
    assert summary.benchmark is None


def test_summary_failed_when_a_check_failed():
    summary = summary_of(_ran(), [_check(True), _check(False)])
    assert summary.status == "failed"


def test_markdown_names_the_failing_stage_and_its_error(tmp_path):
    summary = summary_of(_ran(names=("trace", "register", "stop"), fail="register"))
    text = markdown(summary, tmp_path)
    assert "**failed**" in text
    assert "Stage **register**" in text
    assert "RuntimeError: register broke" in text
    assert str(tmp_path) in text


def test_markdown_reports_checks_and_benchmark(tmp_path):
    bench = _bench([0.1, 0.2], 1, 64, 2.0)
    summary = summary_of(_ran(), [_check(False), _check(True)], bench)
    text = markdown(summary, tmp_path)
    assert "- ✗ **tutorial: failed**: 3/6" in text.splitlines()
    assert "- ✓ tutorial: 6/6" in text.splitlines()
    assert "concurrency 64" in text and "errors 1" in text


def test_latest_points_to_the_newest_run(tmp_path):
    runs = tmp_path / "runs"
    first = new_run_dir(runs)
    second = new_run_dir(runs)
    assert first != second and first.is_dir() and second.is_dir()
    latest = runs / "latest"
    assert latest.is_symlink()
    assert latest.resolve() == second.resolve()
    # Relative link: the runs directory can be moved or mounted elsewhere.
    assert os.readlink(latest) == second.name
    assert sorted(p.name for p in runs.iterdir()) == sorted([first.name, second.name, "latest"])


def test_markdown_says_whether_the_compile_cache_hit_and_why_a_stage_was_skipped(tmp_path):
    stages = _ran(names=("trace", "archive", "stop"))
    stages.records["trace"].status, stages.records["trace"].reason = "skipped", "--traced g.pt given"
    hit = summary_of(stages, trace={"cache": "hit", "seconds_saved": 31.96})
    text = markdown(hit, tmp_path)
    assert "Compile cache: **hit**, 32.0 s saved" in text
    assert "| trace | skipped (--traced g.pt given) |" in text
    miss = summary_of(_ran(), trace={"cache": "miss", "seconds_saved": 0.0, "reason": "no entry"})
    assert "Compile cache: **miss** (no entry)" in markdown(miss, tmp_path)


# --- pictures in the summary, per-deployment keys, provenance, the run page ------------------------

PNG = b"\x89PNG\r\n\x1a\n"
DATA_URI = re.compile(r"!\[([^\]]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def _loaded_bench() -> BenchmarkResult:
    """10 s of answers, latencies spread 50-400 ms: a timeline and a histogram to draw."""
    samples = [Sample(i * 0.01, i * 0.01, i * 0.01 + 0.05 + (i % 36) * 0.01, True) for i in range(1000)]
    return BenchmarkResult.from_load(LoadResult("closed", 8, None, 10.0, samples))


def test_summary_embeds_both_pictures_as_small_pngs_and_keeps_the_files(tmp_path):
    bench = _loaded_bench()
    drawn = pictures(bench, tmp_path)
    assert set(drawn) == {"throughput and latency", "latency histogram"}
    summary = summary_of(_ran(), [], bench, run_dir=tmp_path, pictures=drawn)
    text = markdown(summary, tmp_path)
    found = {alt: base64.b64decode(data) for alt, data in DATA_URI.findall(text)}
    assert set(found) == {"throughput and latency", "latency histogram"}
    for alt, png in found.items():
        assert png.startswith(PNG)
        assert 5_000 < len(png) < 80_000, f"{alt}: {len(png)} bytes"  # a picture, and small
        assert (tmp_path / Path(drawn[alt]).name).read_bytes() == png  # the same file in the run directory


def test_no_benchmark_no_pictures(tmp_path):
    assert pictures(None, tmp_path) == {}
    summary = summary_of(_ran(fail="check"), pictures={})
    assert "data:image" not in markdown(summary, tmp_path)


def test_artifact_keys_are_per_deployment_and_per_backend_ad_hoc():
    assert keys.key(keys.SUMMARY, keys.suffix("nightly-cpu-embedded", "cpu")) == "summary-nightly-cpu-embedded"
    assert keys.key(keys.TREND, keys.suffix("Nightly INF2 / xlarge", "neuron")) == "trend-nightly-inf2-xlarge"
    assert keys.key(keys.RUN_CONFIG, keys.suffix(None, "cpu")) == "run-config-adhoc-cpu"
    assert keys.key(keys.SWEEP_SUMMARY, keys.suffix(None, "cuda")) == "sweep-summary-adhoc-cuda"
    assert keys.key(keys.BENCHMARK, keys.suffix(None, "neuron")) == "benchmark-adhoc-neuron"
    assert keys.suffix("nightly-cpu", "cpu") != keys.suffix("nightly-gpu", "cuda")
    for kind in keys.KINDS:
        assert re.fullmatch(r"[a-z0-9-]+", keys.key(kind, keys.suffix("Weird_Name!!", "cpu")))
    with pytest.raises(ValueError):
        keys.key("summry", "adhoc-cpu")


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_provenance_names_the_commit_and_flags_a_dirty_tree(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    clean = git_state(tmp_path)
    assert clean["commit"] == head.strip() and clean["dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    dirty = git_state(tmp_path)
    assert dirty["commit"] == head.strip() and dirty["dirty"] is True and dirty["changed"] == 1
    assert git_state(tmp_path / "not-a-repo")["commit"] == "unknown"


def test_instance_type_from_the_config_else_ec2_dmi_else_unknown(tmp_path):
    assert instance_type("inf2.xlarge", tmp_path)["instance_type"] == "inf2.xlarge"
    assert instance_type(None, tmp_path / "none")["instance_type"] == "unknown"
    (tmp_path / "sys_vendor").write_text("QEMU\n")
    (tmp_path / "product_name").write_text("Standard PC (Q35 + ICH9, 2009)\n")
    assert instance_type(None, tmp_path)["instance_type"] == "unknown"
    (tmp_path / "sys_vendor").write_text("Amazon EC2\n")
    (tmp_path / "product_name").write_text("inf2.8xlarge\n")
    assert instance_type(None, tmp_path) == {"instance_type": "inf2.8xlarge", "source": str(tmp_path / "product_name")}


def test_run_config_rows_carry_the_provenance(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (tmp_path / "a.py").write_text("x = 2\n")
    config = {"model": {"compiler_args": ["--auto-cast", "matmult"]}, "serving": {"instance_type": None}}
    summary = summary_of(_ran())
    summary.provenance = Provenance.model_validate(
        provenance(config, {"compiler_args": ["--auto-cast", "none"]}, tmp_path, tmp_path / "dmi")
    )
    table = {(r["section"], r["name"]): r["value"] for r in run_config_rows({"config_file": "c.yaml"}, summary)}
    assert table[("provenance", "git.dirty")] == "true"
    assert len(table[("provenance", "git.commit")]) == 40
    assert table[("provenance", "instance_type")] == "unknown"
    assert json.loads(table[("provenance", "compiler_args")]) == ["--auto-cast", "none"]  # what was compiled
    assert re.fullmatch(r"[0-9a-f]{16}", table[("provenance", "config_hash")])
    other = provenance({**config, "runs_dir": "elsewhere"}, None, tmp_path, tmp_path / "dmi")
    assert other["config_hash"] != summary.provenance.config_hash
    assert other["compiler_args"] == ["--auto-cast", "matmult"]  # not traced: the config's


def test_summary_json_holds_the_provenance():
    summary = summary_of(_ran(), config=RunConfig.model_validate({"serving": {"instance_type": "trn1.2xlarge"}}))
    assert summary.provenance.instance_type == "trn1.2xlarge"
    assert summary.provenance.git.commit  # this checkout's, or "unknown" without git
    assert {"prefect", "torch", "torchserve"} <= set(summary.versions)


def test_run_page_is_the_current_ui_route(monkeypatch):
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    with temporary_settings({PREFECT_UI_URL: "http://127.0.0.1:4200"}):
        assert run_page("1234") == "http://127.0.0.1:4200/runs/flow-run/1234"
    assert run_page() is None  # not in a flow run
