"""A stage's progress: the load generator's callback, the live terminal line, the few log lines,
and a progress artifact that can fail without failing the stage (tasks/common/progress.py).

On a fake clock (tests/unit/fake_time.py): the loads run in virtual time against a FakeEndpoint, and the
progress threads update when the clock passes their next update, so nothing waits for real time to pass."""

import io
import logging
import re
import threading

import pytest

from tasks.common import progress as progress_module
from tasks.common.progress import CLEAR, StageProgress, describe_load, in_run
from tasks.measure.loadgen import Load, LoadProgress, Watch, load
from tests.unit.fake_time import FakeEndpoint, load_in_virtual_time, progress_on

PAIRS = [(f"first sentence {i}", f"second sentence {i}") for i in range(10)]


class Terminal(io.StringIO):
    """What a terminal receives: a stream that says it is a TTY."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def clock(fake_clock, monkeypatch):
    """The loads and the stages of this module on one fake clock."""
    load_in_virtual_time(monkeypatch, fake_clock)
    progress_on(monkeypatch, fake_clock)
    return fake_clock


def told(fraction: float, warming_up: bool = False) -> LoadProgress:
    return LoadProgress(
        elapsed=fraction * 30,
        planned=30.0,
        fraction=fraction,
        warming_up=warming_up,
        measured_s=fraction * 30,
        requests_per_s=20.0,
        p50_ms=100.0,
        p90_ms=180.0,
        errors=0,
        done=fraction >= 1.0,
    )


def told_by_a_load(endpoint: dict, progress_every: float, **options):
    """What a 2-client load (Load(**options)) against a FakeEndpoint(**endpoint) told its on_progress, and its
    result."""
    seen: list[LoadProgress] = []
    with FakeEndpoint(**endpoint) as trivial:
        result = load(
            trivial.url, {}, PAIRS, Load(concurrency=2, **options), Watch(progress_every, on_progress=seen.append)
        )
    return seen, result


def test_the_load_tells_monotonic_fractions_from_the_warm_up_to_1():
    seen, result = told_by_a_load(dict(delay=0.01), duration=0.8, warmup=0.3, progress_every=0.1)
    fractions = [p.fraction for p in seen]
    assert len(seen) >= 6
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and max(fractions[:-1]) < 1.0
    assert seen[-1].done and not any(p.done for p in seen[:-1])
    assert seen[0].warming_up and not seen[-1].warming_up
    assert seen[-1].requests_per_s == pytest.approx(result.requests_per_s, rel=0.25)
    assert 0 < seen[-1].p50_ms <= seen[-1].p90_ms and seen[-1].errors == 0
    # The running figures are the result's own: the same answers, counted once each.
    assert (seen[-1].p50_ms, seen[-1].p90_ms) == pytest.approx((result.latency().p50, result.latency().p90))


def test_errors_so_far_are_the_failed_measured_requests():
    seen, result = told_by_a_load(dict(status=503), duration=0.5, warmup=0.2, progress_every=0.05)
    errors = [p.errors for p in seen]
    assert errors == sorted(errors) and errors[-1] == result.errors > 0 and errors[0] == 0  # warm-up's not counted
    assert seen[-1].requests_per_s == 0 and seen[-1].p50_ms != seen[-1].p50_ms  # no answers: NaN


def test_a_count_of_requests_moves_with_the_requests_sent():
    seen, _ = told_by_a_load(dict(delay=0.02, serial=True), requests=40, progress_every=0.1)
    fractions = [p.fraction for p in seen]
    assert seen[0].planned is None and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(0.1 < f < 0.99 for f in fractions)  # it moved on the way, not only at the end


def test_a_failing_callback_is_logged_once_and_the_load_goes_on(caplog):
    caplog.set_level(logging.WARNING)
    calls = []

    def broken(progress):
        calls.append(progress)
        raise RuntimeError("the API is down")

    with FakeEndpoint(delay=0.01) as endpoint:
        result = load(
            endpoint.url,
            {},
            PAIRS,
            Load(concurrency=2, duration=0.5),
            Watch(progress_every=0.1, log=logging.getLogger("test-load"), on_progress=broken),
        )
    assert len(calls) >= 4 and result.errors == 0 and len(result.measured) > 10
    warnings = [r.getMessage() for r in caplog.records if r.name == "test-load"]
    assert len(warnings) == 1 and "the API is down" in warnings[0]


def test_without_a_terminal_a_long_load_logs_a_handful_of_lines_and_writes_nothing_else(caplog):
    caplog.set_level(logging.INFO)
    log = logging.getLogger("test-stage")
    stream = io.StringIO()  # a worker's log file, CI: not a TTY
    # Planned as the nightly's 30 s load (so it is logged at its quarters); run for 1.2 s, told every 20 ms.
    with StageProgress("benchmark", {"ceiling": 10, "load": 30}, log=log, stream=stream, every=0.02) as progress:
        progress.phase("ceiling", "ceiling: in-process")
        progress.phase("load", "load: starting the clients")
        callback, calls = progress.load("load"), []
        with FakeEndpoint(delay=0.01) as endpoint:
            load(
                endpoint.url,
                {},
                PAIRS,
                Load(concurrency=2, duration=1.2),
                Watch(progress_every=0.02, on_progress=lambda told: calls.append(told) or callback(told)),
            )
    lines = [r.getMessage() for r in caplog.records if r.name == "test-stage"]
    assert stream.getvalue() == ""
    # The load's start and its quarters (a quarter a stalled tick jumped over is not made up): not one per update.
    assert len(calls) >= 20 and 3 <= len(lines) <= 4, lines
    assert lines[0].startswith("benchmark ") and "load: starting the clients" in lines[0]
    assert all("requests/s" in line and "p90" in line for line in lines[1:])
    assert [int(line.split("%")[0].split()[-1]) for line in lines] == sorted(
        int(line.split("%")[0].split()[-1]) for line in lines
    )


def test_on_a_terminal_one_line_is_rewritten_in_place_and_cleared_at_the_end(monkeypatch, clock):
    monkeypatch.setenv("COLUMNS", "200")
    terminal = Terminal()
    with StageProgress("benchmark", {"load": 2}, stream=terminal, artifact=False, every=0.05) as progress:
        clock.until_waiting(1)  # the line's thread, waiting for its first update
        progress.phase("load")
        with FakeEndpoint(delay=0.01) as endpoint:
            load(
                endpoint.url,
                {},
                PAIRS,
                Load(concurrency=2, duration=1.0, warmup=0.2),
                Watch(progress_every=0.05, on_progress=progress.load("load")),
            )
    out = terminal.getvalue()
    assert "\n" not in out  # one line, never a scrolling list
    drawn = [part for part in out.split(CLEAR) if part]
    assert len(drawn) >= 10 and out.endswith(CLEAR)  # rewritten, then erased
    assert any("warm-up" in part for part in drawn)
    last = drawn[-1]
    assert last.startswith("benchmark ") and "requests/s" in last and "p50" in last and "p90" in last
    assert "errors 0" in last and re.search(r"\d+ s of ~\d+ s", last)  # elapsed, expected


def test_the_expected_time_grows_when_a_phase_overruns_its_plan(clock):
    with StageProgress("benchmark", {"ceiling": 0.1, "load": 1}, stream=io.StringIO(), artifact=False) as progress:
        assert progress.expected() == pytest.approx(1.1)
        progress.phase("ceiling")
        clock.advance(0.05)  # half its plan
        assert progress.expected() == pytest.approx(1.1)
        assert progress.fraction == pytest.approx(0.5 * 0.1 / 1.1)
        clock.advance(0.35)  # 0.4 s of a phase planned 0.1 s
        assert progress.expected() == pytest.approx(0.4 + 1.0)
        assert progress.fraction == pytest.approx(0.95 * 0.1 / 1.1)  # the clock stops short of the end
        progress.phase("load")
        progress.load()(told(0.5))
        assert progress.fraction == pytest.approx((0.1 + 0.5) / 1.1, abs=0.01)


def test_a_load_says_measuring_until_a_rate_means_something_and_waits_for_its_last_answers():
    draining = LoadProgress(
        elapsed=14,
        planned=10,
        fraction=0.99,
        warming_up=False,
        measured_s=12,
        requests_per_s=5,
        p50_ms=float("nan"),
        p90_ms=float("nan"),
        errors=0,
    )
    started = LoadProgress(
        elapsed=2.3,
        planned=10,
        fraction=0.23,
        warming_up=False,
        measured_s=0.3,
        requests_per_s=650,
        p50_ms=float("nan"),
        p90_ms=float("nan"),
        errors=0,
    )
    assert describe_load(started) == "load 0 of 8 s: measuring"  # no rate from a third of a second
    assert describe_load(draining) == (
        "load 8 s sent, waiting for the last answers: 5.0 requests/s, p50 -, p90 -, errors 0"
    )


def test_the_line_never_wraps_on_a_narrow_terminal(monkeypatch, clock):
    monkeypatch.setenv("COLUMNS", "40")  # a wrapped line could not be rewritten in place
    terminal = Terminal()
    with StageProgress("benchmark", {"load": 1}, stream=terminal, artifact=False, every=0.02) as progress:
        clock.until_waiting(1)
        progress.phase("load", "load: a description far longer than forty columns of terminal")
        clock.advance(0.21)
    drawn = [part for part in terminal.getvalue().split(CLEAR) if part]
    assert len(drawn) == 10 and all(len(part) < 40 for part in drawn)  # one every 20 ms


def test_a_log_record_erases_the_live_line_before_it_is_written(clock):
    terminal = Terminal()
    handler = logging.StreamHandler(terminal)
    logger = logging.getLogger("test-console")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with StageProgress("benchmark", {"load": 1}, stream=terminal, artifact=False, every=0.02) as progress:
            clock.until_waiting(1)
            progress.phase("load", "load: starting")
            clock.advance(0.1)
            assert terminal.getvalue().endswith("load: starting")  # the line is drawn
            logger.warning("a log line")
            clock.advance(0.1)
    finally:
        logger.removeHandler(handler)
    out = terminal.getvalue()
    before = out.split("a log line")[0]
    assert before.endswith(CLEAR)  # the record starts on a clean row
    assert handler.filters == []  # the guard is gone with the stage


def test_outside_a_flow_run_there_is_no_artifact_and_no_error():
    assert not in_run()
    with StageProgress("benchmark", {"load": 1}, stream=io.StringIO()) as progress:
        assert progress.artifact is False
        progress.phase("load")
        progress.load()(told(1.0))
    assert progress.artifact_id is None and progress.fraction == 1.0


def test_the_artifact_moves_to_100_with_what_is_running(clock):
    updates = []

    def create(progress, description):
        updates.append((progress, description))
        return "artifact-id"

    def update(artifact_id, progress, description):
        assert artifact_id == "artifact-id"
        updates.append((progress, description))

    with StageProgress(
        "benchmark",
        {"ceiling": 1, "load": 3},
        stream=io.StringIO(),
        artifact=True,
        every=0.02,
        create=create,
        update=update,
    ) as progress:
        clock.until_waiting(1)  # the artifact's thread: created, waiting for its next update
        progress.phase("ceiling", "ceiling: in-process")
        clock.advance(0.2)
        progress.phase("load")
        callback = progress.load("load")
        for step in range(1, 11):
            callback(told(step / 10))
            clock.advance(0.03)
    values = [value for value, _ in updates]
    assert values == sorted(values) and values[0] < 10 and values[-1] == 100.0 and max(values[:-1]) < 100
    assert len(updates) >= 20  # about one per 20 ms that changed something, not only the first and last
    assert any("ceiling: in-process" in text for _, text in updates)
    assert any("requests/s" in text and "p90" in text for _, text in updates)
    assert updates[-1][1].startswith("benchmark done in")


@pytest.mark.parametrize("broken", ["create", "update"])
def test_a_failing_artifact_neither_fails_nor_slows_the_load(broken, caplog):
    caplog.set_level(logging.WARNING)
    calls = {"create": 0, "update": 0}

    def create(progress, description):
        calls["create"] += 1
        if broken == "create":
            raise ConnectionError("the Prefect API is unreachable")
        return "artifact-id"

    def update(artifact_id, progress, description):
        calls["update"] += 1
        raise ConnectionError("the Prefect API is unreachable")

    log = logging.getLogger("test-artifact")
    with StageProgress(
        "benchmark", {"load": 1}, log=log, stream=io.StringIO(), artifact=True, every=0.02, create=create, update=update
    ) as progress:
        progress.phase("load")
        with FakeEndpoint(delay=0.01) as endpoint:
            result = load(
                endpoint.url,
                {},
                PAIRS,
                Load(concurrency=2, duration=0.6),
                Watch(progress_every=0.02, on_progress=progress.load()),
            )
    assert result.errors == 0 and len(result.measured) > 10 and progress.fraction == 1.0
    assert calls["create"] == 1 and calls["update"] == (1 if broken == "update" else 0)  # given up, not retried
    warnings = [r.getMessage() for r in caplog.records if r.name == "test-artifact"]
    assert len(warnings) == 1 and "unreachable" in warnings[0] and "the stage goes on" in warnings[0]


def test_a_hanging_api_does_not_hold_the_stage(monkeypatch):
    # The stage waits FINAL_WAIT_S (2 s) at most for the artifact's last update: 0 here, so a stage that waited
    # for the hanging API to answer would end only once it gave up (5 s), after it answered.
    monkeypatch.setattr(progress_module, "FINAL_WAIT_S", 0.0)
    release, answered = threading.Event(), threading.Event()

    def hang(**_):
        release.wait(5)  # an API that answers nothing
        answered.set()
        return "artifact-id"

    try:
        with StageProgress(
            "benchmark", {"load": 1}, stream=io.StringIO(), artifact=True, every=0.02, create=hang, update=hang
        ) as progress:
            progress.phase("load")
            with FakeEndpoint(delay=0.01) as endpoint:
                result = load(
                    endpoint.url,
                    {},
                    PAIRS,
                    Load(concurrency=2, duration=0.5),
                    Watch(progress_every=0.02, on_progress=progress.load()),
                )
        assert not answered.is_set()  # the stage ended while the API still hung
    finally:
        release.set()
    assert result.seconds == 0.5 and len(result.measured) > 10


@pytest.mark.parametrize("error, word", [(RuntimeError, "failed"), (KeyboardInterrupt, "interrupted")])
def test_a_failed_stage_stays_where_it_stopped_and_says_so(error, word, clock):
    updates = []
    with pytest.raises(error):
        with StageProgress(
            "benchmark",
            {"ceiling": 1, "load": 1},
            stream=io.StringIO(),
            artifact=True,
            every=0.02,
            create=lambda **kw: updates.append(kw) or "id",
            update=lambda **kw: updates.append(kw),
        ) as progress:
            progress.phase("ceiling")
            progress.phase("load")
            progress.load()(told(0.4))
            clock.advance(0.1)
            raise error("TorchServe died")
    assert 60 <= updates[-1]["progress"] < 100
    assert updates[-1]["description"].startswith(f"benchmark {word} after")
    assert "during load" in updates[-1]["description"]


def test_the_load_is_told_as_it_begins_not_only_after_the_first_interval():
    seen, _ = told_by_a_load({}, duration=0.5, warmup=0.2, progress_every=5)
    assert len(seen) == 2 and seen[0].warming_up and seen[0].elapsed < 0.2 and seen[1].fraction == 1.0
