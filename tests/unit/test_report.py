import os
import time

import pytest

from tasks.measure.benchmark import summarize
from tasks.verify.checks import CheckResult, Prediction
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


def test_stages_record_ok_failed_skipped_and_reraise():
    stages = Stages(["trace", "archive", "start"])
    with stages.run("trace"):
        time.sleep(0.05)
    with pytest.raises(ValueError, match="bad archive"):
        with stages.run("archive"):
            raise ValueError("bad archive")
    records = {r["name"]: r for r in stages.as_list()}
    assert records["trace"]["status"] == "ok" and records["trace"]["seconds"] >= 0.05
    assert records["trace"]["error"] is None
    assert records["archive"]["status"] == "failed"
    assert records["archive"]["error"] == "ValueError: bad archive"
    assert records["start"] == {"name": "start", "status": "skipped", "seconds": 0.0, "error": None}
    assert [r.name for r in stages.failed()] == ["archive"]
    assert [r["name"] for r in stages.as_list()] == ["trace", "archive", "start"]


def test_stages_record_a_base_exception_such_as_a_signal():
    class Terminated(BaseException):
        pass

    stages = Stages(["register"])
    with pytest.raises(Terminated):
        with stages.run("register"):
            raise Terminated("received signal 15")
    assert stages.records["register"].status == "failed"
    assert "received signal 15" in stages.records["register"].error


def _check(passed):
    prediction = Prediction(seq_0="a", seq_1="b", expected="paraphrase", answer="paraphrase",
                            status_code=200, latency_ms=3.0)
    return CheckResult(name="tutorial", passed=passed, detail="6/6" if passed else "3/6",
                       predictions=[prediction])


def test_summary_ok_when_all_stages_and_checks_pass():
    summary = build_summary(_ran(), [_check(True)], summarize([0.1], 0, 1, 1.0), {"k": 1}, {"run_dir": "x"})
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
    bench = summarize([0.1, 0.2], 1, 64, 2.0)
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
