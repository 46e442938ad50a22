import os

import pytest

from tasks.measure.loadgen import LoadResult, Sample
from tasks.measure.results import BenchmarkResult
from tasks.serve.clients import Prediction
from tasks.verify.checks import CheckResult
from flows.stages import Stages
from tasks.report.summary import build_summary, markdown, new_run_dir


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
    prediction = Prediction(seq_0="a", seq_1="b", expected="paraphrase", answer="paraphrase",
                            status_code=200, latency_ms=3.0)
    return CheckResult(name="tutorial", passed=passed, detail="6/6" if passed else "3/6",
                       predictions=[prediction])


def test_summary_ok_when_all_stages_and_checks_pass():
    summary = build_summary(_ran(), [_check(True)], _bench([0.1], 0, 1, 1.0), {"k": 1}, {"run_dir": "x"})
    assert summary["status"] == "ok"
    assert {"python", "torch", "transformers", "torchserve", "prefect"} <= set(summary["versions"])
    assert summary["config"] == {"k": 1} and summary["run_dir"] == "x"
    assert summary["benchmark"]["requests"] == 1
    # Predictions go to their own artifact, not into the summary.
    assert "predictions" not in summary["checks"][0]


def test_summary_failed_when_a_stage_failed():
    summary = build_summary(_ran(fail="check"), [], None, {}, {})
    assert summary["status"] == "failed"
    assert summary["benchmark"] is None


def test_summary_failed_when_a_check_failed():
    summary = build_summary(_ran(), [_check(True), _check(False)], None, {}, {})
    assert summary["status"] == "failed"


def test_markdown_names_the_failing_stage_and_its_error(tmp_path):
    summary = build_summary(_ran(names=("trace", "register", "stop"), fail="register"), [], None, {}, {})
    text = markdown(summary, tmp_path)
    assert "**failed**" in text
    assert "Stage **register**" in text
    assert "RuntimeError: register broke" in text
    assert str(tmp_path) in text


def test_markdown_reports_checks_and_benchmark(tmp_path):
    bench = _bench([0.1, 0.2], 1, 64, 2.0)
    summary = build_summary(_ran(), [_check(False)], bench, {}, {})
    text = markdown(summary, tmp_path)
    assert "| tutorial | NO | 3/6 |" in text
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
    hit = build_summary(stages, [], None, {}, {"trace": {"cache": "hit", "seconds_saved": 31.96}})
    text = markdown(hit, tmp_path)
    assert "Compile cache: **hit**, 32.0 s saved" in text
    assert "| trace | skipped (--traced g.pt given) |" in text
    miss = build_summary(_ran(), [], None, {}, {"trace": {"cache": "miss", "seconds_saved": 0.0, "reason": "no entry"}})
    assert "Compile cache: **miss** (no entry)" in markdown(miss, tmp_path)
