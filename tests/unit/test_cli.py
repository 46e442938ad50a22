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
