"""The flow's typed parameters: RunSettings, what the UI's Run form renders, and how a run merges them."""

import types
import typing

import pytest
from pydantic import ValidationError

from flows.cli import config_fields, flag_of
from tasks.common.config import REPO_ROOT, ConfigError, RunConfig, load_config
from tasks.common.parameters import SETTINGS, RunSettings, config_field, given, merged, read


def form():
    """The parameter schema Prefect stores on a deployment: what the UI's Run form is drawn from."""
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import validate

    return parameter_schema(validate).model_dump()


def _kinds(prop: dict) -> list[dict]:
    """The kinds of value a field takes, bare: no null, no title, description or default."""
    return [_bare(kind) for kind in prop.get("anyOf", [prop]) if kind.get("type") != "null"]


def _bare(schema: dict) -> dict:
    return {key: value for key, value in schema.items() if key not in ("default", "description", "title", "flag")}


def _given(kind: dict) -> dict:
    """A setting's kind without its empty choice: an on/off setting is the choice true, false or empty."""
    if "enum" not in kind:
        return kind
    values = [value for value in kind["enum"] if value is not None]
    return {"type": "boolean"} if values == [True, False] else {**kind, "enum": values}


def test_the_run_form_shows_each_setting_as_a_typed_field_with_a_description():
    schema = form()
    assert list(schema["properties"]) == ["config_file", "settings", "overrides"]
    assert schema["properties"]["settings"]["$ref"] == "#/definitions/RunSettings"
    settings = schema["definitions"]["RunSettings"]
    assert settings["additionalProperties"] is False
    assert list(settings["properties"]) == list(SETTINGS)
    for name, prop in settings["properties"].items():
        assert "default" not in prop, name  # empty: the config file decides
        assert "Empty: the config file's" in prop["description"], name
        assert all("type" in kind or "const" in kind or "enum" in kind for kind in _kinds(prop)), name
    props = settings["properties"]
    # A plain field, not a switch between a number and None (how the form draws `X or null`).
    assert _kinds(props["batch_size"]) == [{"type": "integer", "minimum": 1, "maximum": 256}]
    assert "else the default (6)" in props["batch_size"]["description"]
    # A choice the form can leave empty; a toggle could not be, and the UI sends an untouched one as false.
    assert _kinds(props["benchmark"]) == [{"enum": [True, False, None]}]
    assert _kinds(props["backend"]) == [{"type": "string", "enum": ["auto", "neuron", "cuda", "cpu", None]}]
    assert _kinds(props["load"])[0]["enum"] == ["closed", "open", None]
    assert _kinds(props["regression"])[0]["enum"] == ["warn", "fail", None]
    assert _kinds(props["workers"]) == [{"type": "integer", "minimum": 1}, {"const": "auto", "type": "string"}]
    # The flow's own parameters carry their docstring's words; no settings given by default.
    assert "empty keeps the config file" in schema["properties"]["settings"]["description"]
    assert schema["properties"]["settings"]["default"] == {}


def test_the_api_accepts_empty_settings_given_as_null_and_refuses_a_bad_one_naming_it():
    """What Prefect's API does with a new run's parameters (enforce_parameter_schema)."""
    from prefect.utilities.schema_tools import ValidationError as Refused
    from prefect.utilities.schema_tools import validate

    schema = form()
    validate({"settings": {name: None for name in SETTINGS}}, schema, raise_on_error=True)
    validate({"settings": {"benchmark": False, "workers": "auto", "backend": "cpu"}}, schema, raise_on_error=True)
    for settings, field in (
        ({"batch_size": 0}, "settings.batch_size"),
        ({"backend": "tpu"}, "settings.backend"),
        ({"benchmark": "yes"}, "settings.benchmark"),
        ({"batchsize": 4}, "batchsize"),
    ):
        with pytest.raises(Refused, match=field):
            validate({"settings": settings}, schema, raise_on_error=True)


def test_each_setting_accepts_exactly_what_its_config_field_accepts():
    """Same types, bounds and choices as RunConfig's field (taken from it, not copied), same description."""
    properties = RunSettings.model_json_schema()["properties"]
    config_schema = RunConfig.model_json_schema()
    for name, dotted in SETTINGS.items():
        *sections, leaf = dotted.split(".")
        node = config_schema
        for section in sections:
            node = config_schema["$defs"][node["properties"][section]["$ref"].rsplit("/", 1)[1]]
        assert [_given(kind) for kind in _kinds(properties[name])] == _kinds(node["properties"][leaf]), name
        assert properties[name]["description"].startswith(config_field(dotted).description), name


def _plain(kind: object) -> object:
    """A type without its constraints (Annotated's metadata), a union as the set of its members: int | None and
    Optional[Annotated[int, Ge(1)]] are the same plain type."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Annotated:
        return _plain(args[0])
    if origin in (typing.Union, types.UnionType):
        members: set[object] = set()
        for arg in map(_plain, args):
            members |= arg if isinstance(arg, frozenset) else {arg}
        return frozenset(members)
    if origin is typing.Literal:
        return ("Literal", frozenset(args))
    if origin is not None:
        return origin, tuple(map(_plain, args))
    return kind


def test_the_type_checkers_runsettings_declares_each_setting_with_its_config_fields_type():
    """The static declaration (what mypy sees) and the generated model (what a run gets) cannot drift: the same
    names in the same order, and each the type of its RunConfig field, or None."""
    declared = RunSettings.__base__
    assert declared.__name__ == "RunSettings" and declared is not RunSettings
    assert list(declared.model_fields) == list(RunSettings.model_fields) == list(SETTINGS)
    for name, dotted in SETTINGS.items():
        wanted = _plain(config_field(dotted).annotation | None)
        assert _plain(declared.model_fields[name].annotation) == wanted, name
        assert _plain(RunSettings.model_fields[name].annotation) == wanted, name


def test_the_plain_types_compared_drop_constraints_only():
    assert _plain(typing.Annotated[int, "ge=1"] | None) == _plain(int | None) == frozenset({int, type(None)})
    assert _plain(list[typing.Annotated[int, "ge=8"]] | None) == _plain(list[int] | None)
    assert _plain(typing.Literal["warn", "fail"] | None) != _plain(typing.Literal["warn"] | None)
    assert _plain(int | None) != _plain(float | None)
    assert _plain(list[int]) != _plain(list[str])


def test_settings_are_named_like_the_command_line_flags():
    flags = {dotted: flag_of(field).replace("-", "_") for dotted, field in config_fields().items()}
    for name, dotted in SETTINGS.items():
        assert name == flags.get(dotted, dotted.rsplit(".", 1)[1]), name


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": "four"}, "batch_size"),
        ({"workers": "many"}, "workers"),
        ({"backend": "tpu"}, "backend"),
        ({"min_accuracy": 70}, "min_accuracy"),
        ({"length_buckets": [4]}, "length_buckets"),
        ({"batchsize": 4}, "batchsize"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(settings, field):
    with pytest.raises(ValidationError) as caught:
        RunSettings.model_validate(settings)
    assert {error["loc"][0] for error in caught.value.errors()} == {field}


def test_empty_settings_leave_the_config_file_in_charge():
    config_file = "configs/inf2-xlarge.yaml"
    applied, replaced = merged(RunSettings(), None)
    assert applied == {} and replaced == []
    assert load_config(config_file, applied).serving.backend == "neuron"
    assert given(RunSettings()) == {} and given(None) == {}


def test_settings_become_dotted_overrides_and_win_over_overrides():
    settings = RunSettings(batch_size=4, workers="auto", benchmark=False, length_buckets=[40])
    applied, replaced = merged(settings, {"serving.batch_size": 2, "benchmark.warmup": 1, "benchmark.enabled": False})
    assert applied == {
        "serving.batch_size": 4,
        "serving.initial_workers": "auto",
        "benchmark.enabled": False,
        "serving.length_buckets": [40],
        "benchmark.warmup": 1,
    }
    # Only a real contradiction is worth a line in the run's log.
    assert replaced == ["settings.batch_size = 4 replaces overrides['serving.batch_size'] = 2"]
    config = load_config(None, applied)
    assert (config.serving.batch_size, config.benchmark.warmup, config.serving.buckets()) == (4, 1.0, [40, 128])


def test_settings_as_stored_in_a_flow_run_are_read_back():
    """stop_what_the_run_left gets the flow run's parameters as JSON: nulls for the empty settings."""
    stored = {**{name: None for name in SETTINGS}, "duration": 5.0}
    applied, _ = merged(stored, {"runs_dir": "/tmp/runs"})
    assert applied == {"benchmark.duration": 5.0, "runs_dir": "/tmp/runs"}
    assert given(stored) == {"duration": 5.0}


def test_a_setting_the_file_check_refuses_is_refused_when_the_run_loads_its_config():
    """The form checks types and bounds; whether a file exists is known only on the worker's host."""
    applied, _ = merged(RunSettings(accuracy_file="no-such.tsv"), None)
    with pytest.raises(ConfigError, match=rf"checks\.accuracy_file = '{REPO_ROOT}/no-such.tsv'.*does not exist"):
        load_config(None, applied)


def test_the_cancellation_hook_finds_the_runs_directory_of_a_run_with_settings(monkeypatch, tmp_path):
    """on_cancellation / on_crashed: the hook rebuilds the run's config from the stored parameters."""
    import types

    import flows.run

    looked_in = []
    monkeypatch.setattr(flows.run, "stop_stale", lambda runs_dir: looked_in.append(runs_dir) or [])
    stored = {
        "config_file": "configs/inf2-xlarge.yaml",
        "settings": {**{name: None for name in SETTINGS}, "batch_size": 4, "benchmark": False},
        "overrides": {"runs_dir": str(tmp_path)},
    }
    flow_run = types.SimpleNamespace(parameters=stored, name="a-run")
    flows.run.stop_what_the_run_left(None, flow_run, types.SimpleNamespace(name="Cancelled"))
    assert looked_in == [tmp_path]


def test_the_cancellation_hook_reads_a_relative_path_as_the_run_did_wherever_the_worker_runs(monkeypatch, tmp_path):
    import types

    import flows.run

    looked_in = []
    monkeypatch.setattr(flows.run, "stop_stale", lambda runs_dir: looked_in.append(runs_dir) or [])
    stored = {"config_file": "configs/gpu.yaml", "settings": {}, "overrides": {"runs_dir": "runs-of-a-deployment"}}
    monkeypatch.chdir(tmp_path)  # a worker's process, started anywhere
    flows.run.stop_what_the_run_left(None, types.SimpleNamespace(parameters=stored, name="a-run"), None)
    the_run, _ = read(stored["config_file"], stored["settings"], stored["overrides"])
    assert looked_in == [the_run.runs_dir] == [REPO_ROOT / "runs-of-a-deployment"]
