import pytest

import flows.validate as validate_module
from flows.validate import main, parse_args
from tasks.config import load_config


@pytest.fixture
def no_flow(monkeypatch):
    """Fail the test if main gets as far as starting the Prefect flow."""
    def refuse(*args, **kwargs):
        raise AssertionError("the flow was started despite a bad configuration")

    monkeypatch.setattr(validate_module, "validate", refuse)


def test_bad_batch_size_is_refused_before_the_flow(no_flow, capsys):
    assert main(["--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:")
    assert "serving.batch_size" in err


def test_bad_worker_count_text_is_refused(no_flow, capsys):
    assert main(["--workers", "many"]) == 2
    assert "serving.initial_workers" in capsys.readouterr().err


def test_missing_config_file_is_refused(no_flow, capsys, tmp_path):
    missing = tmp_path / "missing.yaml"
    assert main(["--config", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_no_benchmark_flag_turns_benchmark_off():
    args = vars(parse_args(["--no-benchmark"]))
    assert args["benchmark.enabled"] is False
    overrides = {k: v for k, v in args.items() if k != "config" and v is not None}
    assert load_config(None, overrides).benchmark.enabled is False


def test_flags_not_given_leave_the_file_in_charge():
    args = vars(parse_args([]))
    assert args.pop("config") == "configs/default.yaml"
    assert all(value is None for value in args.values())


def test_workers_flag_becomes_a_number():
    args = vars(parse_args(["--workers", "3", "--free-ports", "--keep-serving"]))
    config = load_config(None, {k: v for k, v in args.items() if k != "config" and v is not None})
    assert config.serving.initial_workers == 3
    assert config.serving.free_ports is True and config.keep_serving is True


class _State:
    def __init__(self, error):
        self.error = error

    def result(self):
        raise self.error


def test_register_retries_only_retryable_errors():
    retry = validate_module._retry_register
    assert retry(None, None, _State(validate_module.register_stage.RegisterError("503", retryable=True))) is True
    assert retry(None, None, _State(validate_module.register_stage.RegisterError("400"))) is False
    assert retry(None, None, _State(KeyError("x"))) is False


def test_benchmark_load_flags_reach_the_config(tmp_path):
    pool = tmp_path / "pairs.yaml"
    pool.write_text("- {label: paraphrase, seq_0: a, seq_1: b}\n")
    args = vars(parse_args(["--load", "open", "--rate", "12.5", "--requests", "300", "--regression", "fail",
                            "--pairs-file", str(pool)]))
    config = load_config(None, {k: v for k, v in args.items() if k != "config" and v is not None})
    bench = config.benchmark
    assert (bench.mode, bench.rate, bench.requests, bench.regression_action) == ("open", 12.5, 300, "fail")
    assert bench.pairs_file == pool


def test_bad_load_mode_is_refused_by_argparse():
    with pytest.raises(SystemExit):
        parse_args(["--load", "sideways"])


def test_sweep_cli_parses_its_grid():
    from flows.sweep import parse_args as sweep_args

    args = sweep_args(["--batch-sizes", "2,6", "--workers", "1,2", "--delays", "10,50", "--concurrency", "8,64",
                       "--p90-limit-ms", "2000"])
    assert (args.batch_sizes, args.workers, args.delays, args.concurrency) == ([2, 6], [1, 2], [10, 50], [8, 64])
    assert args.p90_limit_ms == 2000


def test_sweep_marks_the_best_configuration_within_the_p90_limit():
    from flows.sweep import best_under_limit

    rows = [{"label": "a", "inferences_per_s": 50.0, "p90_ms": 2500.0, "errors": 0},
            {"label": "b", "inferences_per_s": 40.0, "p90_ms": 900.0, "errors": 0},
            {"label": "c", "inferences_per_s": 45.0, "p90_ms": 800.0, "errors": 3},
            {"label": "d", "inferences_per_s": 30.0, "p90_ms": 100.0, "errors": 0}]
    assert best_under_limit(rows, 1000.0)["label"] == "b"
    assert [row["best"] for row in rows] == [False, True, False, False]
    assert [row["within_limit"] for row in rows] == [False, True, False, True]
    assert best_under_limit(rows, None)["label"] == "a"
    assert best_under_limit(rows, 50.0) is None
