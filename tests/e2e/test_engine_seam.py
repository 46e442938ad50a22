"""The engine seam fits TorchServe too: the same seven steps the Ray Serve engine takes (tests/e2e/test_ray_engine.py)
drive a real TorchServe through the stages' own code, and the check stage runs unchanged against what start
returns. (Ray's side of the seam runs only where the extra [ray] is installed; this one runs everywhere.)"""

import pytest

from tasks.common.config import ChecksConfig, ServingConfig, load_config
from tasks.common.sizing import resolve_serving
from tasks.engines.torchserve.engine import TorchServeEngine
from tasks.serve.server import load_record
from tasks.verify.checks import run_checks
from tests.e2e.conftest import SMALL_BATCH, SMALL_LENGTH, assert_server_gone

pytestmark = pytest.mark.e2e

DELAY = 50


def test_the_seam_drives_torchserve_from_package_to_stop(small_model, tmp_path):
    engine = TorchServeEngine()
    serving = ServingConfig(batch_size=SMALL_BATCH, max_length=SMALL_LENGTH, free_ports=True)
    resolved = resolve_serving(serving)
    package = engine.package(small_model, tmp_path / "model_store")
    assert package.path.suffix == ".mar" and package.info == small_model.info
    started = engine.start(serving, resolved, package, tmp_path / "server")
    try:
        deployment = engine.deploy(started, package, DELAY, 1, timeout=120)
        replicas = engine.ready(started, deployment, timeout=60)
        mark = engine.mark(started, deployment)
        results = run_checks(started, package, load_config().model, ChecksConfig(), DELAY)
        figures = engine.metrics(started, deployment, mark)
    finally:
        outcome = engine.stop(started)
    assert [(r.name, r.detail) for r in results if not r.passed] == []
    assert deployment.action == "registered" and deployment.replicas == len(replicas) == 1
    assert replicas[0].unit == f"CPU ({resolved.threads_per_worker} threads)"
    assert figures.times is not None and figures.times.handler_ms is not None and figures.times.batches > 0
    assert figures.model_load is not None and figures.model_load.register_to_ready_s
    assert outcome.stopped >= 2
    recorded = load_record(tmp_path / "server")
    assert recorded is not None
    assert_server_gone(recorded)
