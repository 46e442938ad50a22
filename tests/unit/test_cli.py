import contextlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

from flows.cli import build_parser, config_fields, config_file, config_overrides, flag_of, main, parse_args
from tasks.common.config import PATH_KEYS, REPO_ROOT, load_config


@pytest.fixture
def no_flow(monkeypatch):
    """Fail the test if main gets as far as starting the Prefect flow (or even importing it)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the flow was started despite a bad configuration")

    monkeypatch.setitem(sys.modules, "flows.pipeline", types.SimpleNamespace(validate=refuse))


def exit_code(argv, capsys) -> tuple[int, str]:
    """What the command line answers: (exit status, stderr), whether main returns or argparse exits."""
    try:
        code = main(argv)
    except SystemExit as done:
        code = done.code
    return code, capsys.readouterr().err


def test_every_flag_in_help_carries_its_fields_description():
    text = build_parser().format_help()
    unwrapped = "".join(text.split())  # help wraps lines at spaces and hyphens
    for key, field in config_fields().items():
        assert f"--{flag_of(field)}" in text
        assert "".join(field.description.split()) in unwrapped, key
        assert f"[{key};default:" in unwrapped


def test_help_shows_the_nights_own_defaults():
    text = " ".join(build_parser().format_help().split())
    assert "[model.kind; default: auto]" in text  # the checkpoint decides: no file pins a kind
    assert "[serving.batch_size; default: 6]" in text


@pytest.mark.parametrize(
    "argv, key, value",
    [
        (["--model", "/ckpt"], "model.source", "/ckpt"),
        (["--kind", "sequence-classification"], "model.kind", "sequence-classification"),
        (["--batch-size", "4"], "serving.batch_size", 4),
        (["--max-length", "64"], "serving.max_length", 64),
        (["--max-batch-delay", "10"], "serving.max_batch_delay", 10),
        (["--backend", "cpu"], "serving.backend", "cpu"),
        (["--instance-type", "inf2.xlarge"], "serving.instance_type", "inf2.xlarge"),
        (["--workers", "3"], "serving.initial_workers", 3),
        (["--workers", "auto"], "serving.initial_workers", "auto"),
        (["--address", "0.0.0.0"], "serving.address", "0.0.0.0"),
        (["--no-token-auth"], "serving.token_auth", False),
        (["--free-ports"], "serving.free_ports", True),
        (["--accuracy-file", "dev.tsv"], "checks.accuracy_file", "dev.tsv"),
        (["--min-accuracy", "0.7"], "checks.min_accuracy", 0.7),
        (["--concurrency", "8"], "benchmark.concurrency", 8),
        (["--duration", "60"], "benchmark.duration", 60.0),
        (["--warmup", "1"], "benchmark.warmup", 1.0),
        (["--no-benchmark"], "benchmark.enabled", False),
        (["--load", "open"], "benchmark.mode", "open"),
        (["--rate", "12.5"], "benchmark.rate", 12.5),
        (["--requests", "300"], "benchmark.requests", 300),
        (["--pairs-file", "pairs.yaml"], "benchmark.pairs_file", "pairs.yaml"),
        (["--regression", "fail"], "benchmark.regression_action", "fail"),
        (["--runs-dir", "/tmp/runs"], "runs_dir", "/tmp/runs"),
        (["--keep-serving"], "keep_serving", True),
    ],
)
def test_a_flag_becomes_its_dotted_override(argv, key, value):
    if key in PATH_KEYS:  # a path as the flow reads it: absolute, from where the command runs
        value = str(Path.cwd() / value)
    assert config_overrides(parse_args(argv)) == {key: value}


def test_flags_not_given_leave_the_file_in_charge():
    args = parse_args([])
    assert args.config is None and config_file(args) is None  # no file: the defaults
    assert config_overrides(args) == {}


def test_a_relative_path_on_the_command_line_is_relative_to_where_it_runs(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("serving:\n  batch_size: 4\n")
    (tmp_path / "pairs.yaml").write_text("- {label: paraphrase, seq_0: a, seq_1: b}\n")
    monkeypatch.chdir(tmp_path)
    args = parse_args(["--config", "mine.yaml", "--pairs-file", "pairs.yaml", "--runs-dir", "runs"])
    assert config_file(args) == str(tmp_path / "mine.yaml")
    # The flow reads its parameters relative to the checkout, wherever this command ran: they reach it absolute.
    config = load_config(config_file(args), config_overrides(args))
    assert config.serving.batch_size == 4
    assert (config.benchmark.pairs_file, config.runs_dir) == (tmp_path / "pairs.yaml", tmp_path / "runs")


def test_flags_reach_the_validated_config(tmp_path):
    pool = tmp_path / "pairs.yaml"
    pool.write_text("- {label: paraphrase, seq_0: a, seq_1: b}\n")
    args = parse_args(
        [
            "--workers",
            "3",
            "--free-ports",
            "--keep-serving",
            "--no-benchmark",
            "--load",
            "open",
            "--pairs-file",
            str(pool),
        ]
    )
    config = load_config(args.config, config_overrides(args))
    assert config.serving.initial_workers == 3
    assert config.serving.free_ports is True and config.keep_serving is True
    assert config.benchmark.enabled is False and config.benchmark.mode == "open"
    assert config.benchmark.pairs_file == pool


@pytest.mark.parametrize(
    "argv, field, fix",
    [
        (["--batch-size", "0"], "serving.batch_size", "greater than or equal to 1"),
        (["--batch-size", "four"], "serving.batch_size", "give a whole number"),
        (["--workers", "many"], "serving.initial_workers", "give a whole number or auto"),
        (["--load", "sideways"], "benchmark.mode", "give one of closed, open"),
        (["--min-accuracy", "70"], "checks.min_accuracy", "less than or equal to 1"),
    ],
)
def test_a_bad_value_is_refused_naming_the_field_and_the_fix_before_the_flow(argv, field, fix, no_flow, capsys):
    code, err = exit_code(argv, capsys)
    assert code == 2
    assert "error:" in err
    assert field in err and fix in err


def test_the_ray_engine_without_ray_installed_is_refused_naming_the_setup_that_adds_it(no_flow, capsys, monkeypatch):
    from tasks.engines import installed

    real = installed.importlib.util.find_spec
    monkeypatch.setattr(installed.importlib.util, "find_spec", lambda name: None if name == "ray" else real(name))
    for argv in (["--engine", "ray"], ["--engines", "torchserve,ray"]):
        code, err = exit_code(argv, capsys)
        assert code == 2 and "Ray Serve is not installed" in err and "./setup.sh --ray" in err
    assert exit_code(["--engines", "torchserve,ray", "--batch-size", "0"], capsys)[0] == 2  # the config first


def test_engines_are_given_comma_separated_and_each_once(no_flow, capsys):
    config = load_config(None, config_overrides(parse_args(["--engines", "torchserve, ray"])))
    assert config.serving.night_engines() == ["torchserve", "ray"]
    code, err = exit_code(["--engines", "ray,ray"], capsys)
    assert code == 2 and "serving.engines" in err and "give each engine once" in err
    for argv in (["--engines", "torchserve,ray", "--keep-serving"], ["--engine", "ray", "--keep-serving"]):
        code, err = exit_code(argv, capsys)
        assert code == 2 and "keep_serving keeps a TorchServe up" in err


def test_missing_config_file_is_refused(no_flow, capsys, tmp_path):
    missing = tmp_path / "missing.yaml"
    code, err = exit_code(["--config", str(missing)], capsys)
    assert code == 2
    assert str(missing) in err


@pytest.mark.parametrize("module, flag", [("flows.validate", "--batch-size"), ("flows.stop", "run_dir")])
def test_help_answers_without_importing_prefect_torch_or_transformers(module, flag):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert flag in done.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    heavy = {name for name in imported if name.split(".")[0] in {"prefect", "torch", "transformers", "ts"}}
    assert not heavy, f"--help imported {sorted(heavy)[:5]}"


def test_sweep_cli_parses_its_grid():
    from flows.sweep import parse_args as sweep_args

    args = sweep_args(
        [
            "--batch-sizes",
            "2,6",
            "--workers",
            "1,2",
            "--delays",
            "10,50",
            "--concurrency",
            "8,64",
            "--p90-limit-ms",
            "2000",
        ]
    )
    assert (args.batch_sizes, args.workers, args.delays, args.concurrency) == ([2, 6], [1, 2], [10, 50], [8, 64])
    assert args.p90_limit_ms == 2000


def test_sweep_offers_the_configs_flags_as_overrides():
    from flows.sweep import parse_args as sweep_args

    args = sweep_args(
        ["--max-length", "64", "--duration", "5", "--warmup", "1", "--free-ports", "--runs-dir", "/tmp/runs"]
    )
    assert config_overrides(args) == {
        "serving.max_length": 64,
        "benchmark.duration": 5.0,
        "benchmark.warmup": 1.0,
        "serving.free_ports": True,
        "runs_dir": "/tmp/runs",
    }


def test_sweep_marks_the_best_configuration_within_the_p90_limit():
    from tasks.measure.sweep_rows import rank
    from tests.unit.test_sweep_rows import row

    rows = [row(1, 50.0, 2500.0), row(2, 40.0, 900.0), row(3, 45.0, 800.0, errors=3), row(4, 30.0, 100.0)]
    assert [r.setting.concurrency for r in rank(rows, 1000.0)] == [2, 4]
    assert [r.best for r in rows] == [False, True, False, False]
    assert [r.within_limit for r in rows] == [False, True, False, True]
    assert rank(rows, None)[0].setting.concurrency == 1
    assert rank(rows, 50.0) == [] and not any(r.best for r in rows)


def test_a_kept_server_is_told_with_the_command_that_stops_it_wherever_its_runs_dir_is(monkeypatch, tmp_path, capsys):
    """With --runs-dir, `python -m flows.stop` alone would look in runs/latest and leave this TorchServe running."""
    run_dir = tmp_path / "elsewhere" / "20261205-020000-abcdef"
    summary = {
        "status": "ok",
        "run_dir": str(run_dir),
        "server": {"inference_url": "http://127.0.0.1:1", "management_url": "http://127.0.0.1:2", "key_file": "k"},
    }
    state = types.SimpleNamespace(result=lambda raise_on_failure: summary)
    monkeypatch.setitem(sys.modules, "flows.pipeline", types.SimpleNamespace(validate=lambda **kwargs: state))
    # No night runs here: no temporary Prefect server, no signal handling of the command's own in this process.
    monkeypatch.setitem(sys.modules, "flows.temporary_api", types.SimpleNamespace(temporary_api=contextlib.nullcontext))
    monkeypatch.setattr("flows.interrupts.WATCH.install", lambda dedicated: None)
    monkeypatch.setattr("flows.cli._sigterm_ends_the_command", lambda: None)
    assert main(["--runs-dir", str(tmp_path / "elsewhere"), "--keep-serving", "--workers", "1"]) == 0
    assert f"stop it:    python -m flows.stop {run_dir}\n" in capsys.readouterr().out
