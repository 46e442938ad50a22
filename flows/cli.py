"""The command line of `python -m flows.validate`, generated from RunConfig's fields.

A field marked json_schema_extra={"flag": NAME} in tasks/common/config.py is the option --NAME: its
description is the help, its Literal values the choices, its annotation the type, and a bool
gives --NAME / --no-NAME. What is given becomes a dotted override ({"serving.batch_size": 4})
for load_config, so a value from a flag and the same key in a config file are judged alike.

Only pydantic and yaml load before the arguments are parsed: --help and a refused value answer
at once, and Prefect (and the run) start only for a configuration that validates.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from flows.stop import command as stop_command
from tasks.common.config import EngineName, RunConfig, anchored
from tasks.common.errors import PipelineError
from tasks.common.parameters import read, shown, value_at
from tasks.common.sizing import resolve_serving
from tasks.engines.installed import require_installed

# How a value given on the command line is read, described and shown, per annotated type. A path
# stays text: pydantic makes it a Path, and the overrides go to Prefect as flow parameters.
_READERS: dict[type, tuple[Any, str, str]] = {
    int: (int, "a whole number", "N"),
    float: (float, "a number", "X"),
    str: (str, "text", "TEXT"),
    Path: (str, "a path", "PATH"),
    # One option holds several words (--compiler-args="--auto-cast none"): split the way a shell would.
    list[str]: (shlex.split, "arguments in one quoted string", "'ARGS'"),
    # --engines torchserve,ray: the names pydantic then checks, with the config file's.
    list[EngineName]: (lambda text: [part.strip() for part in text.split(",") if part.strip()], "engines", "E,E"),
}


def config_fields(model: type[BaseModel] = RunConfig, prefix: str = "") -> dict[str, FieldInfo]:
    """The fields marked as flags, by dotted key, in the order they are declared."""
    found = {}
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found.update(config_fields(field.annotation, f"{prefix}{name}."))
        elif flag_of(field):
            found[prefix + name] = field
    return found


def flag_of(field: FieldInfo) -> str | None:
    extra = field.json_schema_extra
    flag = extra.get("flag") if isinstance(extra, dict) else None
    return flag if isinstance(flag, str) else None


def add_config_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML run config holding what differs from the defaults (configs/gpu.yaml ...); the options below "
        "override it (default: none, the defaults shown below)",
    )


def add_config_options(parser: argparse.ArgumentParser, only: Iterable[str] | None = None) -> None:
    """An option per flagged field of RunConfig, grouped by section; `only`: just these flag names."""
    wanted = set(only) if only is not None else None
    defaults = RunConfig()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key, field in config_fields().items():
        flag = flag_of(field)
        if wanted is not None and flag not in wanted:
            continue
        section = key.split(".")[0] if "." in key else "run"
        if section not in groups:
            groups[section] = parser.add_argument_group(section)
        default = shown(value_at(defaults, key))
        # Not argparse's default: a flag not given must leave the config file in charge.
        help_text = f"{field.description} [{key}; default: {default}]".replace("%", "%%")
        if _members(field.annotation) == [bool]:
            groups[section].add_argument(f"--{flag}", dest=key, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            read, choices, metavar = _reader(key, field.annotation)
            groups[section].add_argument(
                f"--{flag}", dest=key, type=read, choices=choices, metavar=metavar, help=help_text
            )
    unknown = (wanted or set()) - {flag_of(field) for field in config_fields().values()}
    if unknown:
        raise ValueError(f"no config field is marked as flag {sorted(unknown)}")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, as dotted overrides for load_config, a relative path made absolute from where the
    command runs: the flow reads parameters relative to the checkout."""
    values = vars(args)
    return anchored({key: values[key] for key in config_fields() if values.get(key) is not None}, Path.cwd())


def config_file(args: argparse.Namespace) -> str | None:
    """--config as the flow's config_file: absolute, made from where the command runs; None: the defaults."""
    return str(Path(args.config).expanduser().resolve()) if args.config else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.validate",
        description="Trace, archive, serve, check and benchmark a BERT paraphrase model on TorchServe or Ray Serve "
        "(--engine, --engines). Each option overrides its key (in brackets) in the --config file; the defaults shown "
        "are the night's own (docs/configuration.md).",
    )
    add_config_file_option(parser)
    add_config_options(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen, overrides = config_file(args), config_overrides(args)
    try:
        # Refuse a bad config, more workers than this host can hold, or an engine not installed here before
        # Prefect starts anything: the flow's own reading of the same parameters.
        config, _ = read(chosen, None, overrides)
        resolve_serving(config.serving)
        require_installed(config.serving.night_engines())
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from flows.interrupts import WATCH
    from flows.pipeline import validate  # Prefect loads here, for a run that will start
    from flows.temporary_api import temporary_api

    WATCH.install(dedicated=True)  # this process exists for the night (flows/interrupts.py)
    _sigterm_ends_the_command()
    try:
        with temporary_api():
            state = validate(config_file=chosen, overrides=overrides, return_state=True)
    except PipelineError as error:  # the run's own API could not start: its message and fix, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    except BaseException as error:
        signum = WATCH.first.signum if WATCH.first else _signal_of(error)
        if signum is None:
            raise
        print(_interrupted(WATCH.run_dir, signum), file=sys.stderr)
        return 128 + signum
    summary = state.result(raise_on_failure=False)
    late = WATCH.sync()
    if late is not None:  # it came as the run was ending: the run's verdict stands, the signal is obeyed
        print(_interrupted(WATCH.run_dir, late.signum), file=sys.stderr)
        return 128 + late.signum
    if not isinstance(summary, dict):
        print(f"error: {summary}\nsummary: {Path(config.runs_dir) / 'latest'}", file=sys.stderr)
        return 1
    print(f"status: {summary['status']}  summary: {Path(summary['run_dir']) / 'summary.json'}")
    if summary["server"]:
        facts = summary["server"]
        print(
            f"TorchServe is still serving.\n  inference:  {facts['inference_url']}\n"
            f"  management: {facts['management_url']}\n"
            f'  keys:       {facts["key_file"]} ("inference" and "management" keys; send as Bearer tokens)\n'
            f"  stop it:    {stop_command(Path(summary['run_dir']))}"
        )
    return 0 if summary["status"] == "ok" else 1


def _sigterm_ends_the_command() -> None:
    """SIGTERM outside the flow run raises Prefect's TerminationSignal, as its engine's handler does inside, so
    the command ends the same way wherever the signal lands. Once: a repeat -- Prefect's engine passing the
    signal on to this handler after its own, or a second SIGTERM -- is the interrupt watch's to act on."""
    from prefect.exceptions import TerminationSignal

    raised: list[int] = []

    def terminate(signum: int, frame: object) -> None:
        if not raised:
            raised.append(signum)
            raise TerminationSignal(signal=signum)

    signal.signal(signal.SIGTERM, terminate)


def _signal_of(error: BaseException) -> int | None:
    """The signal behind an interruption: Ctrl-C, or SIGTERM as Prefect's TerminationSignal -- also when
    Prefect, failing to record the end on a temporary API server that is gone, raised an error from it."""
    from prefect.exceptions import TerminationSignal

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return signal.SIGINT
        if isinstance(seen, TerminationSignal):
            return seen.signal
        seen = seen.__cause__ or seen.__context__
    return None


def _interrupted(run_dir: Path | None, signum: int) -> str:
    """The one line an interrupted command ends with, told by the run's own summary: what stopped it, where
    it was, what became of TorchServe. No run directory: the run had not started. A summary that is missing
    or cannot be read says so -- whether TorchServe was stopped is then unknown, and the line does not guess."""
    from flows.interrupts import said

    if run_dir is None:
        return f"interrupted by {said(signum)} before the run started: nothing to stop"
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
        told = summary.get("interrupted")
        if told is None:  # the signal came once the run had ended: its summary stands as written
            return f"interrupted by {said(signum)} after the run ended (status {summary['status']}); summary: {path}"
        return f"interrupted: {told['by']} {told['during']}: {told['server']}; summary: {path}"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return (
            f"interrupted by {said(signum)}: the run's summary {path} is missing or unreadable "
            f"({type(error).__name__}: {error}), so whether TorchServe was stopped is unknown; "
            f"{stop_command(run_dir)} stops one it left"
        )


def _members(annotation: Any) -> list[Any]:
    """The types a value may have: a union's members without None, Annotated constraints dropped."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [member for arg in typing.get_args(annotation) if arg is not type(None) for member in _members(arg)]
    if typing.get_origin(annotation) is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    return [annotation]


def _reader(key: str, annotation: Any) -> tuple[Any, list[str] | None, str | None]:
    """(read, choices, metavar) for a field: its Literal words as they are, else its type's reader."""
    members = _members(annotation)
    words = [word for member in members if typing.get_origin(member) is Literal for word in typing.get_args(member)]
    kinds = [member for member in members if typing.get_origin(member) is not Literal]
    missing = [kind for kind in kinds if kind not in _READERS]
    if missing:
        raise TypeError(f"{key}: no command-line reader for {missing}; add one to _READERS or unmark the flag")
    wanted = " or ".join([_READERS[kind][1] for kind in kinds] + ([", ".join(words)] if words else []))
    if not kinds:
        wanted = f"one of {', '.join(words)}"

    def read(text: str) -> Any:
        if text in words:
            return text
        for kind in kinds:
            try:
                return _READERS[kind][0](text)
            except ValueError:
                pass
        raise argparse.ArgumentTypeError(f"{key} = {text!r}: give {wanted}")

    metavar = None if not kinds else "|".join([_READERS[kind][2] for kind in kinds] + words)
    return read, (words if not kinds else None), metavar
