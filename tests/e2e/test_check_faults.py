"""Plant each fault a served model really has in a real TorchServe worker, and see the check
meant for it fail -- while the real handler passes every check.

Each faulty handler subclasses the real one and breaks one thing in one of its steps (preprocess,
inference, postprocess); all are registered side by side in one TorchServe, so a single server
start covers every fault. The model is the session's small one (2 x 32): a batch of 2 still has a partial
batch (1 request, padded), a full one, and batch-mates for the malformed requests.
"""

import textwrap

import pytest

from tasks.common.config import ChecksConfig, ServingConfig, load_config
from tasks.common.sizing import resolve_serving
from tasks.engines.torchserve.engine import started_from
from tasks.prepare.archive import HANDLER_FILE, archive
from tasks.serve.register import register
from tasks.serve.server import start, stop, wait_healthy
from tasks.verify.checks import run_checks
from tests.e2e.conftest import SMALL_BATCH, SMALL_LENGTH, assert_server_gone, trace_small

pytestmark = pytest.mark.e2e

BATCH, LENGTH, DELAY = SMALL_BATCH, SMALL_LENGTH, 100
MODEL = load_config().model

FAULTS = {
    # postprocess answers with the other class's name.
    "wrong-label": """
        def postprocess(self, data):
            flipped = {self.class_names[0]: self.class_names[1], self.class_names[1]: self.class_names[0]}
            return [[flipped[answer[0]]] if isinstance(answer, list) else answer
                    for answer in super().postprocess(data)]
    """,
    # The graph's scores come back NaN.
    "nan-scores": """
        def inference(self, data, *args, **kwargs):
            batch = super().inference(data, *args, **kwargs)
            if batch.scores is not None:
                batch.scores = batch.scores * float("nan")
            return batch
    """,
    # The rows pad_to_batch added are answered too: more answers than requests.
    "padding-kept": """
        def postprocess(self, data):
            answers = super().postprocess(data)
            padding = [] if data.scores is None else data.scores[len(data.indices):]
            return answers + [[self.class_names[int(row.argmax())]] for row in padding]
    """,
    # Every request parsed up front: one malformed request takes the whole batch down.
    "batch-poisoned": """
        def preprocess(self, data):
            for request in data:
                parse_request(request)
            return super().preprocess(data)
    """,
}
# The check each fault must fail, and, where the fault leaves labels alone, one it must still pass
# (a wrong label or a NaN rightly fails every check that reads a label).
EXPECTED = {
    "wrong-label": ("golden pairs", None),
    "nan-scores": ("golden pairs", None),
    "padding-kept": ("partial batch", "tutorial pairs (full batch)"),
    "batch-poisoned": ("malformed requests isolated", "golden pairs"),
}


@pytest.fixture(scope="module")
def server_with_faults(small_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    traced = trace_small(work / "model")  # the session's small model: a cache hit
    store = work / "model_store"
    archives = {"real": archive(traced, store)}
    for fault, body in FAULTS.items():
        handler = work / f"{fault.replace('-', '_')}.py"
        handler.write_text(
            "from handler import ParaphraseHandler, parse_request\n\n\n"
            "class Faulty(ParaphraseHandler):" + textwrap.indent(textwrap.dedent(body), "    ")
        )
        archives[fault] = archive(traced, store, name=fault, handler=handler, extra_files=(HANDLER_FILE,))
    serving = ServingConfig(
        batch_size=BATCH, max_length=LENGTH, max_batch_delay=DELAY, free_ports=True, initial_workers=1
    )
    server = start(serving, resolve_serving(serving), store, work / "server")
    try:
        wait_healthy(server, timeout=120)
        for mar in archives.values():
            register(server, mar, max_batch_delay=DELAY, workers=1)
        yield server, archives
    finally:
        stop(server)
        assert_server_gone(server)


def _checks(server, mar):
    results = run_checks(started_from(server, 1), mar, MODEL, ChecksConfig(), DELAY)
    return {result.name: result for result in results}


def test_the_real_handler_passes_every_check(server_with_faults):
    server, archives = server_with_faults
    assert archives["real"].model_name == "bert-max_length32-batch_size2"
    results = _checks(server, archives["real"])
    assert {name: r.passed for name, r in results.items()} == {name: True for name in results}
    assert len(results) == 7
    assert results["requests without the token refused"].detail.startswith("no token: HTTP 400")


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_planted_fault_fails_the_check_meant_for_it(server_with_faults, fault):
    server, archives = server_with_faults
    results = _checks(server, archives[fault])
    must_fail, must_pass = EXPECTED[fault]
    assert results[must_fail].passed is False, results[must_fail].detail
    if must_pass:
        assert results[must_pass].passed is True, results[must_pass].detail
    if fault == "nan-scores":
        assert "NaN or Inf" in results[must_fail].detail
