"""The benchmark stage's parts: a load's result, the pool of pairs, the CPU accounting, the regression verdict."""

import logging
import math

import pytest

from tasks.measure import benchmark as bench_module
from tasks.measure.cpu import cpu_snapshot, cpu_use
from tasks.measure.loadgen import LoadResult, Sample
from tasks.measure.results import BenchmarkResult, Regression


def load(latencies_s=(), errors=0, warmup_answers=(), seconds=10.0, concurrency=4) -> LoadResult:
    """A closed-loop load: measured requests sent at 0 answered after `latencies_s`, `errors` failed,
    and answers at `warmup_answers` s to requests sent during the warm-up."""
    samples = [Sample(0.0, 0.0, latency, True) for latency in latencies_s]
    samples += [Sample(0.0, 0.0, 0.5, False) for _ in range(errors)]
    samples += [Sample(-1.0, -1.0, done, True, measured=False) for done in warmup_answers]
    return LoadResult(
        mode="closed",
        concurrency=concurrency,
        rate=None,
        seconds=seconds,
        samples=samples,
        first_error="HTTP 503: busy" if errors else None,
    )


def test_percentiles_are_of_the_measured_answers():
    result = BenchmarkResult.from_load(load([i / 10 for i in range(1, 11)], concurrency=4))  # 0.1 .. 1.0 s
    assert result.latency_ms.p50 == pytest.approx(550.0) and result.latency_ms.mean == pytest.approx(550.0)
    assert 900.0 <= result.latency_ms.p90 <= result.latency_ms.p99 <= result.latency_ms.max == pytest.approx(1000.0)
    assert result.requests == 10 and result.errors == 0 and result.concurrency == 4 and result.seconds == 10.0


def test_throughput_counts_every_answer_in_the_window_warm_up_requests_included():
    result = BenchmarkResult.from_load(load([0.2] * 10, warmup_answers=[0.1] * 10, seconds=10.0))
    assert result.requests_per_s == pytest.approx(2.0) and result.inferences_per_s == pytest.approx(2.0)
    assert result.requests == 10  # the warm-up's requests are not the run's
    assert result.latency_ms.p50 == pytest.approx(200.0)


def test_errors_count_as_requests_but_not_throughput():
    result = BenchmarkResult.from_load(load([0.2] * 20, errors=5, seconds=4.0))
    assert result.requests == 25 and result.errors == 5 and result.error_rate == pytest.approx(0.2)
    assert result.requests_per_s == pytest.approx(5.0)
    assert result.first_error == "HTTP 503: busy"


def test_no_answers_gives_nan_latency_and_zero_rate():
    result = BenchmarkResult.from_load(load(errors=7))
    assert result.requests_per_s == 0.0 and result.requests == 7 and result.error_rate == 1.0
    assert all(math.isnan(v) for v in result.latency_ms.model_dump().values())


def test_zero_seconds_does_not_divide_by_zero():
    result = BenchmarkResult.from_load(load([0.1], seconds=0.0))
    assert result.requests_per_s == 0.0


def test_the_timeline_goes_to_benchmark_json_only(tmp_path):
    result = BenchmarkResult.from_load(load([0.1, 0.3]))
    assert result.timeline and "timeline" not in result.model_dump()
    written = bench_module.write_json(result, tmp_path / "benchmark.json").read_text()
    assert '"timeline"' in written and '"error_rate"' in written


def test_pool_is_the_mrpc_dev_split_when_present_else_golden_pairs(tmp_path, monkeypatch):
    from tasks.verify import pairs as pairs_module

    monkeypatch.setattr(pairs_module, "MRPC_DEV_FILE", tmp_path / "missing.tsv")
    pairs, described = pairs_module.load_pool(None)
    assert described.startswith("golden_pairs.yaml") and len(pairs) >= 10
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA cat.\tA feline.\n0\t3\t4\tRain.\tSun.\n")
    monkeypatch.setattr(pairs_module, "MRPC_DEV_FILE", tsv)
    pairs, described = pairs_module.load_pool(None)
    assert pairs == [("A cat.", "A feline."), ("Rain.", "Sun.")] and described == "dev.tsv (2 pairs)"
    assert pairs_module.load_pool(tsv)[0] == pairs


@pytest.mark.parametrize(
    "status, action, fails",
    [("regressed", "fail", True), ("regressed", "warn", False), ("ok", "fail", False), ("no history", "fail", False)],
)
def test_only_a_regression_with_action_fail_fails_the_stage(status, action, fails):
    bench = BenchmarkResult.from_load(load([0.1]))
    bench.regression = Regression(status=status, action=action, tolerance=0.2, message="p90 slower")
    assert bench.regression_failed is fails
    if fails:
        with pytest.raises(bench_module.BenchmarkError, match="regression: p90 slower") as caught:
            bench_module.raise_if_regressed(bench)
        assert "--regression warn" in caught.value.fix and not caught.value.retryable
    else:
        bench_module.raise_if_regressed(bench)


def test_no_regression_check_never_fails_the_stage():
    bench = BenchmarkResult.from_load(load([0.1]))
    assert bench.regression is None and not bench.regression_failed
    bench_module.raise_if_regressed(bench)


def test_cpu_use_splits_the_load_window_by_process_role(fake_clock, monkeypatch):
    import psutil

    from tasks.measure import cpu
    from tests.unit.fake_time import TimeOn

    monkeypatch.setattr(cpu, "time", TimeOn(fake_clock))  # the window's length: 0.3 s on a fake clock
    me = psutil.Process()
    server = {"workers": [], "frontend": []}  # no server process: this process is the client
    before = cpu_snapshot(server)
    burned = sum(me.cpu_times()[:2])
    while sum(me.cpu_times()[:2]) - burned < 0.05:
        pass  # burn 50 ms of this process's CPU (CPU time, whatever the host's load)
    fake_clock.advance(0.3)
    after = cpu_snapshot(server)
    use = cpu_use(before, after, requests=10, ceiling=None)
    assert use.seconds == pytest.approx(0.3) and use.host_cores >= 1
    # this process's burn is counted as the client's
    assert use.client_cores * use.seconds >= 0.05
    assert use.workers_cores == 0 and use.other_cores >= 0
    assert use.worker_cpu_ms_per_request == 0 and use.ceiling_cpu_ms_per_inference is None


def test_open_loop_reports_offered_against_achieved_late_and_dropped():
    samples = [Sample(i / 10, i / 10 + (0.05 if i % 4 == 0 else 0.0), i / 10 + 0.2, True) for i in range(40)]
    samples += [Sample(4.0, 4.0, 4.0, False, dropped=True) for _ in range(10)]
    result = BenchmarkResult.from_load(LoadResult(mode="open", concurrency=4, rate=12.5, seconds=4.0, samples=samples))
    opened = result.open_loop
    assert opened.offered_per_s == 12.5 and opened.achieved_per_s == pytest.approx(39 / 4)  # one answer after 4 s
    assert opened.sent_per_s == pytest.approx(10.0) and opened.late == 10 and opened.dropped == 10
    assert result.errors == 0 and result.error_rate == pytest.approx(10 / 50)  # dropped requests failed the user


def test_a_closed_loop_has_no_open_loop_figures_and_windows_say_whether_it_was_stable():
    steady = BenchmarkResult.from_load(load([0.1] * 40, seconds=4.0), window_s=1.0)
    assert steady.open_loop is None and steady.windows.requests_per_s == [40.0, 0.0, 0.0, 0.0]
    assert not steady.windows.stable and steady.windows.cv > 1  # all answers in the first second
    spread = [Sample(0.0, 0.0, t / 10 + 0.01, True) for t in range(40)]
    even = BenchmarkResult.from_load(
        LoadResult(mode="closed", concurrency=4, rate=None, seconds=4.0, samples=spread), window_s=1.0, stability_cv=0.1
    )
    assert even.windows.stable and even.windows.cv == pytest.approx(0.0)
    assert sum(even.histogram.counts) == 40


def test_accuracy_comes_from_the_check_stages_accuracy_check_only():
    from tasks.verify.checks import CheckResult

    checks = [
        CheckResult(name="golden pairs", passed=True, detail="", metrics={"accuracy": 1.0}),
        CheckResult(name="accuracy", passed=True, detail="", metrics={"accuracy": 0.7402, "f1": 0.8}),
    ]
    assert bench_module.accuracy_of(checks) == 0.7402
    assert bench_module.accuracy_of(checks[:1]) is None and bench_module.accuracy_of([]) is None


def test_the_progress_weighs_each_part_of_the_stage_by_its_planned_seconds():
    from types import SimpleNamespace

    from tasks.common.config import load_config

    settings = load_config().benchmark.model_copy(
        update={
            "warmup": 2,
            "duration": 30,
            "ceiling_seconds": 2,
            "ceiling_windows": 4,
            "client_check_seconds": 1,
            "single_client_seconds": 3,
        }
    )
    one_worker = SimpleNamespace(initial_workers=1, threads_per_worker=2)
    plan = bench_module.planned_seconds(settings, one_worker)
    assert list(plan) == ["ceiling", "client check", "load", "server figures", "lone client", "capacity", "wrap-up"]
    assert plan["load"] == 32 and plan["client check"] == 1.5 and plan["lone client"] == 3
    # all threads, one stream per thread (each 4 windows of 0.5 s after a first round: 2.5 s), then the lone
    # batch (half the time), after the child starts
    assert plan["ceiling"] == bench_module.CEILING_START_S + 2 * 2.5 + 1
    two_workers = SimpleNamespace(initial_workers=2, threads_per_worker=1)
    assert bench_module.planned_seconds(settings, two_workers)["ceiling"] == bench_module.CEILING_START_S + 2 * 2.5 + 2
    # A brought .mar has no ceiling; a part configured off weighs nothing.
    skipped = settings.model_copy(update={"client_check_seconds": 0, "single_client_seconds": 0})
    plan = bench_module.planned_seconds(skipped, one_worker, ceiling=False)
    assert plan["ceiling"] == plan["client check"] == plan["lone client"] == 0


def test_one_setting_is_measured_against_the_served_model_with_the_ceiling_given(tmp_path, monkeypatch, fake_clock):
    """measure_setting, which the stage and flows/sweep.py both call: the load as the settings say, the ratio
    to a ceiling measured beforehand, the client's ratio, and no lone client when its seconds are 0. The load
    runs in virtual time against a FakeEndpoint, the telemetry's sampler on the same clock."""
    from types import SimpleNamespace

    from tasks.common.config import load_config
    from tasks.measure import telemetry
    from tasks.measure.ceiling import Ceiling
    from tests.unit.fake_time import FakeEndpoint, load_in_virtual_time

    load_in_virtual_time(monkeypatch, fake_clock)
    monkeypatch.setattr(telemetry, "_wait", fake_clock.wait)
    settings = load_config(
        overrides={
            "benchmark.duration": 0.5,
            "benchmark.warmup": 0.1,
            "benchmark.concurrency": 2,
            "benchmark.single_client_seconds": 0,
            "benchmark.capacity.enabled": False,
        }
    ).benchmark
    resolved = SimpleNamespace(backend="cpu", threads_per_worker=1)
    ceiling = Ceiling(
        batch_size=2,
        max_length=32,
        buckets=[32],
        threads=1,
        batches_per_s=1e6,
        inferences_per_s=2e6,
        best_layout="1x1",
        batch_latency_ms=1.0,
        lone_batch_latency_ms=1.0,
        worker_lone_batch_latency_ms=1.0,
        layouts=[],
    )
    client = bench_module.ClientCapacity(
        requests_per_s=1e6, concurrency=2, seconds=1.0, latency_ms=BenchmarkResult.from_load(load([0.001])).latency_ms
    )
    with FakeEndpoint() as endpoint:
        served = FakeServed(endpoint.url, fake_clock)
        bench = bench_module.measure_setting(
            served, [("a", "b")], settings, resolved, logging.getLogger("test"), ceiling=ceiling, client=client
        )
    assert bench.concurrency == 2 and bench.mode == "closed" and bench.errors == 0 and bench.inferences_per_s > 0
    assert bench.requests_per_s == pytest.approx(2 / 0.01, rel=0.05)  # 2 clients, each answered in 10 ms
    assert bench.ceiling is ceiling and bench.served_over_ceiling == bench.inferences_per_s / 2e6
    assert bench.client.over_served == 1e6 / bench.requests_per_s
    assert bench.single_client is None and bench.cpu is not None and bench.engine == "fake"
    # The engine's own account is of the window from its mark, taken once the warm-up (0.1 s) was over and
    # before the load's end (0.6 s), on the load's own clock.
    assert 0.1 - 1e-9 <= served.marked_at - served.created_at < 0.6 and bench.server.source == "the fake's"


class FakeServed:
    """A served model (tasks/measure/served.py) with no server process: the FakeEndpoint answers; its engine's
    account of a window says where the window began."""

    engine_name = "fake"

    def __init__(self, url: str, clock):
        self.predictions_url, self.server_dir, self.clock = url, None, clock
        self.created_at, self.marked_at = clock.monotonic(), None

    def inference_headers(self) -> dict[str, str]:
        return {}

    def processes(self) -> dict:
        return {"workers": [], "frontend": []}

    def mark(self):
        from tasks.measure.results import Mark

        self.marked_at = self.clock.monotonic()
        return Mark(at=self.marked_at)

    def figures(self, since):
        from tasks.measure.results import Figures, ServerTimes

        return Figures(times=ServerTimes(source="the fake's"))


def test_served_over_in_process_is_unreliable_when_either_side_varied_and_is_then_not_compared():
    from tasks.measure.ceiling import Ceiling
    from tasks.measure.results import windows as windows_of

    def ceiling_with(cv):
        return Ceiling(
            batch_size=6,
            max_length=128,
            buckets=[128],
            threads=2,
            batches_per_s=10.0,
            inferences_per_s=60.0,
            best_layout="all threads",
            batch_latency_ms=100.0,
            lone_batch_latency_ms=50.0,
            worker_lone_batch_latency_ms=80.0,
            windows=3,
            cv=cv,
            layouts=[],
        )

    steady, unsteady = windows_of([50.0, 51.0, 50.5], 10.0, 0.1), windows_of([30.0, 60.0, 45.0], 10.0, 0.1)
    bench = BenchmarkResult.from_load(load([0.2] * 10)).model_copy(
        update={"served_over_ceiling": 0.83, "windows": steady}
    )
    assert bench_module.unreliable_comparison(bench, ceiling_with(0.02), 0.1) is None
    said = bench_module.unreliable_comparison(bench, ceiling_with(0.15), 0.1)
    assert said == "the ceiling varied 15.0% over 3 windows, over the 10% allowed"
    load_varied = bench.model_copy(update={"windows": unsteady})
    assert "the load's throughput varied" in bench_module.unreliable_comparison(load_varied, ceiling_with(0.02), 0.1)
    assert (
        bench_module.unreliable_comparison(
            bench.model_copy(update={"served_over_ceiling": None}), ceiling_with(0.5), 0.1
        )
        is None
    )  # no ratio, nothing to doubt

    # Tonight's unreliable ratio is not compared; an earlier night's unreliable one is no baseline.
    history = [{"served_over_ceiling": 0.9}] * 4 + [{"served_over_ceiling": 0.2, "served_over_ceiling unreliable": "x"}]
    verdict = regression_compare({"served_over_ceiling": 0.85}, history)
    assert verdict.baseline["served_over_ceiling"] == 0.9
    unreliable = bench.model_copy(update={"comparison_unreliable": said})
    assert any("unreliable tonight" in warning for warning in bench_module._warnings(unreliable))


def regression_compare(current, history):
    from tasks.measure.regression import compare

    return compare(current, history, 0.2)
