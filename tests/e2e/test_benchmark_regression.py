"""Regression history read back through a real Prefect API: the same flow, deployment (none here),
parameters and fingerprint only, completed runs only, newest first. No TorchServe: each "night"
is a tiny flow run that publishes a benchmark table artifact the way tasks/report/summary.py does
(figures.table_rows), under an ad-hoc run's key (benchmark-adhoc-<backend>, tasks/common/keys.py)."""

import pytest
from prefect import flow
from prefect.artifacts import create_table_artifact

from tasks.common import keys
from tasks.measure import figures, regression
from tasks.measure.figures import INFERENCES_PER_S, LATENCY_P90
from tasks.measure.results import BenchmarkResult, Memory
from tests import nights

pytestmark = pytest.mark.e2e

# What the next night publishes. Not a parameter: nights must share their parameters to compare.
TONIGHT: dict = {}


def _bench(served: float, latency_s: float, fingerprint: str, rss_mib: float = 1200.0) -> BenchmarkResult:
    return nights.night(
        served,
        latency_s,
        fingerprint=fingerprint,
        memory=Memory(
            samples=10,
            frontend_rss_mib=300.0,
            workers_rss_mib=rss_mib - 300.0,
            worker_rss_mib=(rss_mib - 300.0) / 2,
            total_rss_mib=rss_mib,
        ),
    )


@flow(name="regression-probe")
def night(config_file: str | None = None, overrides: dict | None = None):
    if TONIGHT.get("publish"):
        bench = _bench(
            TONIGHT["rate"], TONIGHT["p90_s"], TONIGHT.get("fingerprint", "fp-a"), TONIGHT.get("rss", 1200.0)
        )
        create_table_artifact(
            key=keys.key(keys.BENCHMARK, keys.suffix(None, TONIGHT.get("backend", "cpu"))),
            table=figures.table_rows(bench),
        )
    if TONIGHT.get("fail"):
        raise RuntimeError("a failed night")
    if TONIGHT.get("check"):
        tonight = _bench(TONIGHT["rate"], TONIGHT["p90_s"], "fp-a", TONIGHT.get("rss", 1200.0))
        tolerances = {"memory total_rss_mib": 0.15}
        suffix = keys.suffix(None, TONIGHT.get("backend", "cpu"))  # as the benchmark stage passes it
        return regression.check(tonight, "fp-a", 3, 0.2, "fail", tolerances, suffix=suffix).model_dump()
    return None


def _night(overrides=None, **plan):
    TONIGHT.clear()
    TONIGHT.update(plan)
    state = night(overrides=overrides or {"x": 1}, return_state=True)
    return state.result(raise_on_failure=False)


def test_regression_compares_with_the_median_of_comparable_completed_runs(prefect_server):
    # Oldest first. Only the three marked "ok" are comparable with tonight.
    _night(publish=True, rate=10.0, p90_s=1.0)  # ok, but the 4th most recent comparable: beyond N=3
    _night(publish=True, rate=20.0, p90_s=1.0)  # ok
    _night(publish=True, rate=22.0, p90_s=1.1)  # ok
    _night(publish=True, rate=1.0, p90_s=9.0, fail=True)  # failed: not history
    _night(publish=True, rate=1.0, p90_s=9.0, overrides={"x": 2})  # other parameters
    _night(publish=True, rate=1.0, p90_s=9.0, fingerprint="fp-b")  # other fingerprint (host, batching...)
    _night(publish=True, rate=1.0, p90_s=9.0, fingerprint="fp-b", backend="neuron")  # another backend's key
    _night(publish=True, rate=21.0, p90_s=1.2)  # ok, the newest
    _night()  # completed, but published no benchmark (benchmark off): skipped

    verdict = _night(check=True, rate=20.0, p90_s=1.1)
    assert verdict["status"] == "ok" and verdict["runs"] == 3
    assert verdict["baseline"][INFERENCES_PER_S.name] == pytest.approx(21.0)
    assert verdict["baseline"][LATENCY_P90.name] == pytest.approx(1100.0)

    slow = _night(check=True, rate=12.0, p90_s=1.1)
    assert slow["status"] == "regressed" and slow["action"] == "fail"
    assert slow["problems"][0].startswith(f"{INFERENCES_PER_S.name} 12.0 vs median 21.0 of 3 runs")

    # A leak alone: memory +25 % with throughput and latency as before is flagged, and nothing else.
    leak = _night(check=True, rate=21.0, p90_s=1.1, rss=1500.0)
    assert leak["status"] == "regressed"
    assert [row["figure"] for row in leak["table"] if row["regressed"]] == ["memory total_rss_mib"]
    assert {row["figure"] for row in leak["table"]} >= {INFERENCES_PER_S.name, LATENCY_P90.name, "latency_ms p50"}


def test_no_comparable_history_passes(prefect_server):
    verdict = _night(check=True, rate=20.0, p90_s=1.0, overrides={"never": "seen"})
    assert verdict["status"] == "no history" and verdict["runs"] == 0


def test_an_accepted_baseline_leaves_the_nights_before_it_out(prefect_server, capsys):
    """A real slow-down, accepted with tools.baseline: the nights before it no longer count, the next night has no
    history and passes, and the baseline builds up from the nights since. Cleared, every night counts again."""
    from tools import baseline

    accepted = {"overrides": {"x": "accepted"}}  # parameters of their own: no other test's nights
    for rate in (20.0, 21.0, 22.0):
        _night(publish=True, rate=rate, p90_s=1.0, **accepted)
    assert _night(check=True, rate=12.0, p90_s=1.0, **accepted)["status"] == "regressed"

    assert baseline.main(["accept", "adhoc-cpu"]) == 0
    assert "adhoc-cpu: the regression compares only with nights started at or after" in capsys.readouterr().out
    assert _night(check=True, rate=12.0, p90_s=1.0, **accepted)["status"] == "no history"
    _night(publish=True, rate=12.0, p90_s=1.0, **accepted)  # the first night since
    since = _night(check=True, rate=12.5, p90_s=1.0, **accepted)
    assert since["status"] == "ok" and since["runs"] == 1

    assert baseline.main(["show", "adhoc-cpu"]) == 0 and "baseline since 20" in capsys.readouterr().out
    assert baseline.main(["clear", "adhoc-cpu"]) == 0
    assert _night(check=True, rate=12.0, p90_s=1.0, **accepted)["status"] == "regressed"  # 12 vs median 21
