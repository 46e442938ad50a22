"""summary.json is a typed RunSummary, and the JSON Schema docs/results.md publishes for readers' own tooling is
the model's -- and a summary as a run writes it passes that schema."""

import json

import jsonschema

from tasks.common.processes import Stopped
from tasks.report.run_summary import RunSummary, schema
from tests.nights import StagesAs, night, summary
from tools.summary_schema import DOC, published

STAGES = [{"name": name, "status": "ok", "seconds": 1.0} for name in ("trace", "archive", "start", "stop")]


def published_schema() -> dict:
    return json.loads(published(DOC.read_text()))


def test_the_published_schema_is_the_models():
    assert published(DOC.read_text()) == schema(), "run: python -m tools.summary_schema"


def test_a_written_summary_passes_the_published_schema_and_reads_back_the_same(tmp_path):
    model = {"kind": "bi-encoder", "class_names": ["not paraphrase", "paraphrase"], "threshold": 0.6821}
    written = summary(
        StagesAs(STAGES),
        bench=night(12.0, 0.4, fingerprint="fp"),
        run_dir=tmp_path,
        model={**model, "backend": "cpu", "compiler_args": [], "parity_tolerance": 1e-3, "parity_max_abs_diff": 1e-5},
        trace={"cache": "hit", "seconds_saved": 12.5, "key": "k"},
        interrupted={
            "by": "Ctrl-C (SIGINT)",
            "stage": "benchmark",
            "during": "during benchmark",
            "stopped": Stopped(stopped=3),
            "server": "TorchServe stopped (3 processes)",
        },
    )
    on_disk = json.loads(written.write(tmp_path).read_text())
    jsonschema.Draft202012Validator(published_schema()).validate(on_disk)
    assert on_disk["status"] == "interrupted" and on_disk["interrupted"]["stopped"] == {
        "stopped": 3,
        "escalated": [],
        "survivors": [],
    }
    assert on_disk["model"]["kind"] == "bi-encoder" and on_disk["config"]["model"]["threshold"] == 0.6821
    assert RunSummary.model_validate(on_disk).model_dump() == written.model_dump()


def test_the_schema_refuses_what_a_reader_would_misread(tmp_path):
    on_disk = json.loads(summary(StagesAs(STAGES), run_dir=tmp_path).write(tmp_path).read_text())
    validator = jsonschema.Draft202012Validator(published_schema())
    assert list(validator.iter_errors(on_disk)) == []
    assert list(validator.iter_errors({**on_disk, "status": "passed"}))  # not one of ok, failed, interrupted
    assert list(validator.iter_errors({**on_disk, "stages": [{"name": "trace"}]}))  # a stage without its status
