"""No failure is lost in silence: what the pipeline goes on without is named in a warning (the artifact keys,
the trend, the summary's pictures, the Ctrl-C line)."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import prefect.main  # noqa: F401  -- Prefect sets up its logging here: before caplog's handler, not over it
import pytest
from prefect.runtime import deployment, flow_run

from tasks.common import keys
from tasks.common.config import REPO_ROOT, ConfigError, ModelConfig, load_config
from tasks.report import summary, trend
from tests.nights import StagesAs
from tests.nights import summary as summary_of


@pytest.fixture
def in_a_flow_run(monkeypatch):
    """prefect.runtime.flow_run.id as inside a flow run (no API behind it)."""
    monkeypatch.setitem(flow_run.FIELDS, "id", lambda: "00000000-0000-0000-0000-000000000001")


def _fails(message):
    def fail(*args, **kwargs):
        raise ConnectionError(message)

    return fail


def test_a_deployment_name_the_api_does_not_give_is_warned_about_naming_the_keys_it_costs(monkeypatch, caplog):
    monkeypatch.setitem(deployment.FIELDS, "name", _fails("API down"))
    with caplog.at_level(logging.WARNING):
        assert keys.current_suffix("cpu") == "adhoc-cpu"
    [record] = [r for r in caplog.records if r.name == "tasks.common.keys"]
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert "ConnectionError: API down" in text and "adhoc-<backend>" in text and "trend" in text


def test_no_deployment_is_an_ad_hoc_run_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert keys.current_suffix("cpu") == "adhoc-cpu"  # outside a flow run: nothing to ask
    assert not [r for r in caplog.records if r.name == "tasks.common.keys"]


def test_the_trend_warns_without_a_log_passed_what_it_goes_on_without(in_a_flow_run, monkeypatch, tmp_path, caplog):
    import prefect.artifacts

    from tasks.measure import charts

    monkeypatch.setattr(trend, "earlier_rows", _fails("history unreadable"))
    monkeypatch.setattr(charts, "trend_chart", _fails("no chart today"))
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", _fails("artifact refused"))
    summary_ = summary_of(StagesAs([{"name": "trace", "status": "ok"}]))
    with caplog.at_level(logging.WARNING):
        assert trend.publish_trend("adhoc-cpu", "adhoc-cpu", "calm-otter", None, summary_, tmp_path) is None
    said = [r.getMessage() for r in caplog.records if r.name == "tasks.report.trend"]
    assert len(said) == 3, said
    assert "history unreadable" in said[0] and "this run alone" in said[0]
    assert "no chart today" in said[1] and "table only" in said[1]
    assert "artifact refused" in said[2] and "trend-adhoc-cpu" in said[2]


def test_a_picture_that_cannot_be_drawn_is_warned_about_without_a_log_passed(monkeypatch, tmp_path, caplog):
    from tasks.measure import charts
    from tasks.measure.loadgen import percentiles
    from tasks.measure.results import BenchmarkResult

    bench = BenchmarkResult(
        requests_per_s=1.0,
        inferences_per_s=1.0,
        latency_ms=percentiles([0.1] * 4),
        requests=4,
        errors=0,
        concurrency=1,
        seconds=1.0,
    )
    monkeypatch.setattr(charts, "histogram_chart", _fails("no histogram today"))
    with caplog.at_level(logging.WARNING):
        assert "latency histogram" not in summary.pictures(bench, tmp_path)
    assert any(
        "latency histogram" in r.getMessage() and "no histogram today" in r.getMessage()
        for r in caplog.records
        if r.name == "tasks.report.summary"
    )


def _bug(*args, **kwargs):
    raise KeyError("a bug in the reporting code")


def test_a_bug_in_reporting_fails_it_instead_of_becoming_a_warning(in_a_flow_run, monkeypatch, tmp_path):
    """What the API or a chart may do is warned about and gone around (above); a bug is not: it must fail the test
    that meets it (and the run), not turn into a warning while CI stays green."""
    import prefect.artifacts

    from tasks.measure import charts, regression
    from tests.nights import night

    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", lambda **kwargs: None)
    monkeypatch.setattr(trend, "earlier_rows", _bug)
    with pytest.raises(KeyError):
        trend.publish_trend("adhoc-cpu", "adhoc-cpu", "calm-otter", None, summary_of(StagesAs([])), tmp_path)
    monkeypatch.setattr(trend, "earlier_rows", lambda suffix: [])
    monkeypatch.setattr(charts, "trend_chart", _bug)
    with pytest.raises(KeyError):
        trend.publish_trend("adhoc-cpu", "adhoc-cpu", "calm-otter", None, summary_of(StagesAs([])), tmp_path)
    monkeypatch.setattr(regression, "history", _bug)
    with pytest.raises(KeyError):
        regression.check(night(10.0, 0.1), "abc", 5, 0.2, "warn")
    monkeypatch.setattr(charts, "histogram_chart", _bug)
    with pytest.raises(KeyError):
        summary.pictures(night(10.0, 0.1), tmp_path)
    monkeypatch.setitem(deployment.FIELDS, "name", _bug)
    with pytest.raises(KeyError):
        keys.deployment_name()


def test_the_ctrl_c_line_says_an_unreadable_summary_is_unreadable_and_why(tmp_path):
    import signal

    from flows.cli import _interrupted

    run_dir = tmp_path / "20261124-000000-abcdef"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text('{"status": "interrupted", "stag')  # cut off mid-write
    line = _interrupted(run_dir, signal.SIGINT)
    assert "nothing to stop" not in line
    assert "unreadable" in line and "JSONDecodeError" in line and "python -m flows.stop" in line


# --- an expected failure in the run's log: its message and fix, no traceback; a bug: its traceback -------


def _engine_logs(name: str, error: BaseException, monkeypatch) -> tuple[str, logging.LogRecord]:
    """What Prefect's engine writes for a run that ended on `error` (task_engine.py / flow_engine.py: an
    ERROR with exc_info=True while the exception is handled), formatted the way a handler formats it."""
    import io

    from flows.logs import install_expected_failures

    install_expected_failures()
    logger = logging.getLogger(name)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))  # appends a traceback when exc_info
    records: list[logging.LogRecord] = []
    handler.addFilter(lambda record: records.append(record) or True)
    monkeypatch.setattr(logger, "handlers", [handler])  # Prefect's own (console, API) left out of the test
    try:
        raise error
    except BaseException as raised:
        if name == "prefect.task_runs":
            logger.error(f"Task run failed with exception: {raised!r} - Retries are exhausted", exc_info=True)
        else:
            logger.exception("Encountered exception during execution: %r", raised)
    return stream.getvalue(), records[0]


def _stage_failed(cause: BaseException, during: BaseException | None = None) -> BaseException:
    """The flow's error as flows/run.py's __exit__ raises it: StageFailed from the stage's error -- or, when
    the stop failed while a stage's error (`during`) was being handled, from the stop's error."""
    from flows.stages import StageFailed, Stages

    stages = Stages(["trace", "stop"])
    stages.records["trace"].status, stages.records["trace"].error = "failed", f"{type(cause).__name__}: {cause}"

    def exit_() -> BaseException:
        try:
            raise cause  # the stop's error, caught and kept (Run._stop) ...
        except BaseException as caught:
            kept = caught
        try:
            raise StageFailed(stages) from kept  # ... and raised once the summary is out
        except StageFailed as raised:
            return raised

    if during is None:
        return exit_()
    try:
        raise during
    except BaseException:
        return exit_()


def _trace_error():
    from tasks.prepare.trace import TraceError

    return TraceError(
        "cannot load checkpoint '/models/bert': no such directory",
        fix="point model.source at a directory with config.json, weights and tokenizer files",
    )


@pytest.mark.parametrize("logger", ["prefect.task_runs", "prefect.flow_runs"])
def test_a_pipeline_error_is_logged_by_the_engines_as_its_message_and_fix_without_a_traceback(logger, monkeypatch):
    text, record = _engine_logs(logger, _trace_error(), monkeypatch)
    assert "Traceback" not in text and record.exc_info is None
    assert len(text.strip().splitlines()) == 1, text
    assert "TraceError: cannot load checkpoint '/models/bert': no such directory -- fix: point model.source" in text
    assert "Retries are exhausted" in text or "Encountered exception during execution" in text  # Prefect's words


def test_a_stage_failed_on_a_pipeline_error_is_logged_without_a_traceback(monkeypatch):
    text, _ = _engine_logs("prefect.flow_runs", _stage_failed(_trace_error()), monkeypatch)
    assert "Traceback" not in text
    assert text.startswith(
        "ERROR Encountered exception during execution: StageFailed: stage trace failed: "
        "TraceError: cannot load checkpoint"
    )
    assert "-- fix: point model.source at a directory" in text


@pytest.mark.parametrize("logger", ["prefect.task_runs", "prefect.flow_runs"])
def test_a_bug_keeps_its_traceback(logger, monkeypatch):
    text, record = _engine_logs(logger, ZeroDivisionError("division by zero"), monkeypatch)
    assert record.exc_info is not None
    assert "Traceback (most recent call last)" in text and "ZeroDivisionError: division by zero" in text


@pytest.mark.parametrize(
    "error",
    [
        lambda: _stage_failed(ZeroDivisionError("division by zero")),  # a bug in a stage
        # the stop failed (expected) after a bug: the bug was being handled, and its traceback stays
        lambda: _stage_failed(_trace_error(), during=ZeroDivisionError("division by zero")),
    ],
)
def test_a_stage_failed_that_carries_a_bug_keeps_its_traceback(error, monkeypatch):
    text, _ = _engine_logs("prefect.flow_runs", error(), monkeypatch)
    assert "Traceback (most recent call last)" in text and "ZeroDivisionError: division by zero" in text


def test_the_flow_module_installs_the_filter_once_on_both_engine_loggers():
    import flows.pipeline  # noqa: F401  -- installs it on import (a deployment's run imports it too)
    from flows.logs import ENGINE_LOGGERS, ExpectedFailures, install_expected_failures

    install_expected_failures()
    for name in ENGINE_LOGGERS:
        assert sum(isinstance(f, ExpectedFailures) for f in logging.getLogger(name).filters) == 1


# --- what can be checked before anything starts is ------------------------------------------------------

MRPC_DEV = REPO_ROOT.parent / "shared" / "data" / "msr_paraphrase_dev.tsv"
HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


@pytest.fixture
def no_flow(monkeypatch):
    """Fail the test if the command line gets as far as the flow (or importing it)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the flow was started despite a bad configuration")

    monkeypatch.setitem(sys.modules, "flows.pipeline", types.SimpleNamespace(validate=refuse))


def _command(argv, capsys) -> tuple[int, str]:
    from flows.cli import main

    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "source",
    [
        "/nonexistent/dir",
        "./no-such-model",
        "../no-such-model",
        "~/no-such-model",
        "models/bert/base",
        "tests/no-such-model",
    ],
)
def test_a_local_model_directory_that_does_not_exist_is_refused_before_the_run(source, no_flow, capsys):
    code, err = _command(["--model", source], capsys)
    full = str((Path.cwd() / Path(source).expanduser()).resolve())  # named by its full path, wherever it was typed
    assert code == 2
    assert err.startswith("error:") and f"model.source = {full!r}" in err
    assert f"no such directory {full}" in err and "give a checkpoint directory" in err


def test_a_model_file_is_refused_as_not_a_directory(no_flow, capsys):
    code, err = _command(["--model", "configs/gpu.yaml"], capsys)
    assert code == 2 and "is a file, not a checkpoint directory" in err


@pytest.mark.parametrize("source", ["embedded", "org/name", "bert-base-cased-finetuned-mrpc", "configs"])
def test_the_embedded_model_a_hub_id_and_an_existing_directory_pass(source):
    assert ModelConfig(source=source).source == source  # a hub id is the hub's to answer, once trace runs


def test_a_home_directory_is_expanded_for_trace(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "bert").mkdir()
    assert load_config(None, {"model.source": "~/bert"}).model.source == str(tmp_path / "bert")


@pytest.mark.parametrize(
    "text, said",
    [
        ("- {label: paraphrase, seq_0: a, seq_1: b}\n", "line 1 is not the header"),
        ("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\ta\tb\n", "line 1 is not the header"),  # GLUE's test split
        ("", "the file is empty"),
        (HEADER + "yes\t1\t2\ta\tb\n", "line 2: expected 5 tab-separated fields"),
        (HEADER, "nothing after the header"),
        (b"Quality\t#1 ID\n\xff\xfe\n", "line 2 is not UTF-8 text"),
    ],
)
def test_an_accuracy_file_that_is_not_mrpc_is_refused_before_the_run_naming_the_field_and_line(
    text, said, tmp_path, no_flow, capsys
):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, err = _command(["--accuracy-file", str(path)], capsys)
    assert code == 2
    assert err.startswith("error:") and "checks.accuracy_file" in err and said in err
    assert "give an MSR Paraphrase / GLUE MRPC file" in err  # the fix


def test_a_pairs_pool_that_is_not_mrpc_tsv_is_refused_and_a_yaml_pool_is_not_read_as_tsv(tmp_path):
    bad = tmp_path / "pool.tsv"
    bad.write_text("a,b,c\n")
    with pytest.raises(ConfigError, match=r"benchmark\.pairs_file .*line 1 is not the header"):
        load_config(None, {"benchmark.pairs_file": str(bad)})
    pool = tmp_path / "pool.yaml"
    pool.write_text("- {label: paraphrase, seq_0: a, seq_1: b}\n")
    assert load_config(None, {"benchmark.pairs_file": str(pool)}).benchmark.pairs_file == pool


def test_an_mrpc_file_with_a_malformed_line_among_good_ones_passes_as_the_check_stage_reads_it(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text(HEADER + "1\t1\t2\ta\tb\nbroken line\n0\t3\t4\tc\td\n")
    assert load_config(None, {"checks.accuracy_file": str(path)}).checks.accuracy_file == path
    if MRPC_DEV.is_file():
        # ../shared may be a link: the config holds the file's real path.
        assert load_config(None, {"checks.accuracy_file": str(MRPC_DEV)}).checks.accuracy_file == MRPC_DEV.resolve()


@pytest.mark.parametrize(
    "script, why",
    [
        ("echo 'neuron driver not loaded' >&2; exit 3", "exit status 3: 'neuron driver not loaded'"),
        ("echo 'not json'", "its output is not JSON: 'not json'"),
    ],
)
def test_a_neuron_ls_that_does_not_answer_is_warned_about_naming_why(script, why, tmp_path, monkeypatch, caplog):
    from tasks.common import backends

    tool = tmp_path / "neuron-ls"
    tool.write_text(f"#!/bin/sh\n{script}\n")
    tool.chmod(0o755)
    monkeypatch.setattr(backends, "neuron_ls_path", lambda: str(tool))
    with caplog.at_level(logging.WARNING):
        assert backends.neuron_ls() is None
    [said] = [r.getMessage() for r in caplog.records if r.name == "tasks.common.backends"]
    assert f"{tool} --json-output did not answer ({why})" in said and "going on without its listing" in said
