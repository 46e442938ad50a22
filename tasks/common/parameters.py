"""RunSettings: the flow's typed parameter, the settings a person changes from the UI's Run form.

    validate(config_file="configs/inf2-xlarge.yaml", settings={"batch_size": 4, "benchmark": False})

Each setting is one RunConfig field (SETTINGS maps its name to the field's dotted key). Its type,
its constraints (ge/le, Literal choices) and its description are taken from that field, not
written a second time, so the Run form, Prefect's check of a new flow run and load_config refuse
the same values. The names are the command-line flags' (--batch-size is batch_size), so one
vocabulary serves the terminal and the UI.

Every setting defaults to empty (None): an empty setting leaves the config file's value, so a
deployment's config file (configs/inf2-xlarge.yaml: backend neuron) is never overridden by a form
default. What a run gets, later winning:

    the defaults  <  config file  <  overrides (dotted keys, any field)  <  settings

The settings win over the overrides because they are what a person typed into the form last; the
overrides are the open-ended escape hatch (and what `python -m flows.validate` passes) for every
field the form does not show. A setting that contradicts an override is logged (see `merged`).

What a type checker sees is the class RunSettings below: each setting's name and Python type, declared. What
a run gets is that class's subclass made here at import, each field's type narrowed by its RunConfig field's
constraints (tests/unit/test_parameters.py: the two have the same names and types).

Only pydantic and yaml are imported here: `--help` of the command line must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_serializer
from pydantic.fields import FieldInfo

from tasks.common.config import (
    REPO_ROOT,
    Backend,
    LoadMode,
    RegressionAction,
    RunConfig,
    Workers,
    load_config,
)

# Setting name -> RunConfig field. Named like the command-line flag where the field has one.
SETTINGS: dict[str, str] = {
    "model": "model.source",
    "batch_size": "serving.batch_size",
    "max_length": "serving.max_length",
    "length_buckets": "serving.length_buckets",
    "workers": "serving.initial_workers",
    "max_batch_delay": "serving.max_batch_delay",
    "backend": "serving.backend",
    "instance_type": "serving.instance_type",
    "benchmark": "benchmark.enabled",
    "load": "benchmark.mode",
    "concurrency": "benchmark.concurrency",
    "rate": "benchmark.rate",
    "duration": "benchmark.duration",
    "accuracy_file": "checks.accuracy_file",
    "min_accuracy": "checks.min_accuracy",
    "regression": "benchmark.regression_action",
}


def config_field(dotted: str, model: type[BaseModel] = RunConfig) -> FieldInfo:
    """RunConfig's field at a dotted key such as "serving.batch_size"."""
    *sections, leaf = dotted.split(".")
    for section in sections:
        annotation = model.model_fields[section].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise KeyError(f"{dotted}: {section} is not a section of {model.__name__}")
        model = annotation
    return model.model_fields[leaf]


def value_at(config: BaseModel, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def shown(value: Any) -> str:
    """A config value as a person writes it: on/off, none, a path relative to the checkout."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, Path) and value.is_relative_to(REPO_ROOT):
        return str(value.relative_to(REPO_ROOT))
    return str(value)


def _setting(dotted: str, defaults: RunConfig) -> tuple[Any, Any]:
    """(annotation, Field) of one setting: the RunConfig field's type and constraints, or None."""
    field = config_field(dotted)
    # The field's own ge/le/gt travel in its metadata; Annotated keeps them on the non-empty value.
    kind: Any = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    default = shown(value_at(defaults, dotted))
    description = f"{field.description}. Empty: the config file's {dotted}, else the default ({default})"
    return kind | None, Field(None, description=description)


def _plain_fields(schema: dict[str, Any]) -> None:
    """The Run form draws `X or null` as a switch between X and None, set to None; a plain X field
    left empty says the same. So each setting's schema drops its null and its null default.
    Prefect's API still accepts a null for an optional property when it checks a run (its
    preprocess_schema adds it back to a plain `type`), and pydantic reads it as empty; a choice
    lists null among its values. A setting of several kinds (workers: a number or auto) keeps its
    null. An on/off setting is a choice of true, false or empty: the form's toggle cannot be empty,
    and an untouched one sends false (seen in prefect 3.8.8's UI: `benchmark: false` on every
    custom run, also as `boolean or null`)."""
    for prop in schema["properties"].values():
        kinds = [kind for kind in prop.pop("anyOf") if kind != {"type": "null"}]
        prop.pop("default", None)
        if kinds == [{"type": "boolean"}]:
            prop["enum"] = [True, False, None]
        elif len(kinds) == 1:
            prop.update(kinds[0])
            if "enum" in prop:  # the API's added null must pass the choices too: an empty choice
                prop["enum"] = [*prop["enum"], None]
        else:
            prop["anyOf"] = [*kinds, {"type": "null"}]


class _Settings(BaseModel):
    model_config = ConfigDict(
        extra="forbid",  # a misspelt setting is refused, not ignored
        json_schema_extra=_plain_fields,
    )

    @model_serializer(mode="wrap")
    def _given_only(self, serialize) -> dict[str, Any]:
        """Only the settings given: the flow's default shows as {} and a run records what was set."""
        return {name: value for name, value in serialize(self).items() if value is not None}


class RunSettings(_Settings):
    """The settings of one run; each left empty keeps the config file's value."""

    # Each SETTINGS name, in its order, with its RunConfig field's type (or None). Their bounds and
    # descriptions are the fields' own: the subclass below adds them.
    model: str | None = None
    batch_size: int | None = None
    max_length: int | None = None
    length_buckets: list[int] | None = None
    workers: Workers | None = None
    max_batch_delay: int | None = None
    backend: Backend | None = None
    instance_type: str | None = None
    benchmark: bool | None = None
    load: LoadMode | None = None
    concurrency: int | None = None
    rate: float | None = None
    duration: float | None = None
    accuracy_file: Path | None = None
    min_accuracy: float | None = None
    regression: RegressionAction | None = None


def _settings_model(declared: type[RunSettings]) -> type[RunSettings]:
    """`declared` with each field's type, constraints and description taken from its RunConfig field."""
    defaults = RunConfig()
    fields: dict[str, Any] = {name: _setting(dotted, defaults) for name, dotted in SETTINGS.items()}
    return create_model("RunSettings", __base__=declared, __doc__=declared.__doc__, __module__=__name__, **fields)


if not TYPE_CHECKING:  # a run's RunSettings: the declaration above, constrained (the type checker sees it bare)
    RunSettings = _settings_model(RunSettings)


def as_overrides(settings: BaseModel | dict | None) -> dict[str, Any]:
    """The settings given (not empty), as dotted overrides for load_config."""
    if settings is None:
        return {}
    if isinstance(settings, dict):
        settings = RunSettings.model_validate(settings)
    given = settings.model_dump(mode="json", exclude_none=True)
    return {SETTINGS[name]: value for name, value in given.items()}


def merged(settings: BaseModel | dict | None, overrides: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """(the dotted overrides a run applies, lines naming each override a setting replaced)."""
    from_settings, overrides = as_overrides(settings), overrides or {}
    replaced = [
        f"settings.{name} = {from_settings[dotted]!r} replaces overrides[{dotted!r}] = {overrides[dotted]!r}"
        for name, dotted in SETTINGS.items()
        if dotted in from_settings
        and dotted in overrides
        and overrides[dotted] is not None
        and overrides[dotted] != from_settings[dotted]
    ]
    return {**overrides, **from_settings}, replaced


def given(settings: BaseModel | dict | None) -> dict[str, Any]:
    """The settings given, by name, None left out: what the run records as its `settings` parameter."""
    if settings is None:
        return {}
    if isinstance(settings, dict):
        settings = RunSettings.model_validate(settings)
    return settings.model_dump(mode="json", exclude_none=True)


def read(
    config_file: str | Path | None, settings: BaseModel | dict | None, overrides: dict[str, Any] | None
) -> tuple[RunConfig, list[str]]:
    """A run's configuration from the flow's three parameters -- the one reading the flow, its crash hook and the
    command line's early check share (relative paths: tasks/common/config.py load_config) -- and the lines naming
    each override a setting replaced."""
    applied, replaced = merged(settings, overrides)
    return load_config(config_file, applied), replaced
