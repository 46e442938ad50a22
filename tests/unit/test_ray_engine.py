"""The Ray Serve engine's pieces, without Ray running: the package it serves, what each replica asks of Ray, the
tokens and environment its processes get, Serve's figures read from Prometheus text, and the replica's request
parsing. Only the last needs Ray installed (it imports the deployment); the rest is the pipeline's own code.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import stat

import pytest

from serving.claims import core_claims, record_core
from serving.contract import BACKEND_ENV, THREADS_ENV
from tasks.common.config import ServingConfig
from tasks.common.sizing import ResolvedServing
from tasks.engines.ray import head, metrics
from tasks.engines.ray import package as package_step
from tasks.engines.ray.deploy import REPLICA_QUEUE, replica_options
from tasks.engines.ray.head import RayStarted
from tasks.engines.seam import Endpoints, EngineError, read_inference_key
from tasks.prepare.trace import TracedModel


def resolved(backend: str = "cpu", cores: int = 2, workers: int = 2, threads: int = 3) -> ResolvedServing:
    return ResolvedServing(
        backend=backend,
        device_name=backend,
        cores=cores,
        cores_source="test",
        initial_workers=workers,
        threads_per_worker=threads,
    )


def started(tmp_path, backend: str = "cpu", cores: int = 2, limit: int = 2) -> RayStarted:
    return RayStarted(
        server_dir=tmp_path,
        endpoints=Endpoints(inference_url="http://127.0.0.1:8080"),
        temp_link=tmp_path / "link",
        token_file=tmp_path / "ray_token",
        marker="m",
        ports={"http": 8080, "metrics": 9000},
        backend=backend,
        cores=cores,
        replica_limit=limit,
    )


# --- what each replica asks of Ray ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "cores", "replicas", "asks"),
    [
        ("neuron", 2, 2, {"num_cpus": 0, "resources": {"neuron_cores": 1}}),  # a NeuronCore each, Ray's choice
        ("cuda", 1, 2, {"num_cpus": 0, "num_gpus": 0.5}),  # two replicas share the GPU, as TorchServe's workers
        ("cpu", 2, 2, {"num_cpus": 1}),
    ],
)
def test_each_replica_asks_ray_for_its_unit_and_queues_requests_itself(tmp_path, backend, cores, replicas, asks):
    options = replica_options(started(tmp_path, backend, cores), 6, replicas, tmp_path / "package")
    actor = dict(options["ray_actor_options"])
    path = actor.pop("runtime_env")["env_vars"]["PYTHONPATH"]
    assert actor == asks
    assert path.split(os.pathsep)[0] == str(tmp_path / "package")  # the packed serving/ before the checkout's
    assert options["num_replicas"] == replicas
    assert options["max_ongoing_requests"] == REPLICA_QUEUE  # Serve's default 5 is under one batch of 6
    assert replica_options(started(tmp_path), 64, 1, tmp_path, queue=8)["max_ongoing_requests"] == 128


def test_the_instance_is_sized_as_torchserves_workers(tmp_path):
    ports = {"http": 8080, "metrics": 9000}
    cpu = head.head_request(resolved("cpu", cores=2, workers=2), tmp_path, ports, "127.0.0.1")
    assert (cpu["num_cpus"], cpu["num_gpus"], cpu["resources"]) == (2, 0, {})
    neuron = head.head_request(resolved("neuron", cores=2, workers=2), tmp_path, ports, "127.0.0.1")
    assert neuron["resources"] == {"neuron_cores": 2}  # stated, not detected: Ray only looks in /opt/aws/neuron/bin
    gpu = head.head_request(resolved("cuda", cores=1, workers=4), tmp_path, ports, "127.0.0.1")
    assert gpu["num_gpus"] == 1


def test_more_replicas_than_the_instance_was_started_for_are_refused_before_ray_is_asked(tmp_path):
    from tasks.engines.ray.deploy import deploy
    from tasks.engines.seam import Package

    package = Package.model_construct(engine="ray", model_name="m", path=tmp_path, info=None)
    with pytest.raises(EngineError, match="3 replicas asked, but this instance was started for 2"):
        deploy(started(tmp_path, limit=2), package, 5, 3, timeout=1)


# --- tokens and environment -----------------------------------------------------------------------------------


def test_tokens_are_written_for_the_owner_alone_and_the_inference_key_is_not_rays(tmp_path):
    key_file, token_file = head.write_tokens(tmp_path, inference=True)
    assert key_file is not None
    for path in (key_file, token_file):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    inference = read_inference_key(key_file).get_secret_value()
    assert inference and inference != token_file.read_text()
    assert Endpoints(inference_url="http://x", key_file=key_file).inference_headers() == {
        "Authorization": f"Bearer {inference}"
    }
    again, _ = head.write_tokens(tmp_path, inference=True)  # a second start in the same directory: new keys
    assert read_inference_key(again).get_secret_value() != inference


def test_without_token_auth_there_is_no_inference_key_but_ray_keeps_its_own(tmp_path):
    key_file, token_file = head.write_tokens(tmp_path, inference=False)
    assert key_file is None and len(token_file.read_text()) == 64
    assert Endpoints(inference_url="http://x").inference_headers() == {}


def test_every_ray_process_gets_the_runs_token_file_loopback_and_no_inherited_token(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "someone-elses")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0")
    env = head.head_env(resolved("neuron", threads=3), tmp_path / "ray_token", "marker", batch_size=6)
    assert "RAY_AUTH_TOKEN" not in env and "RAY_ADDRESS" not in env  # either would win over the run's own
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "ray_token")
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # Ray then takes 127.0.0.1 as the node's address
    assert env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == "0"
    assert "NEURON_RT_VISIBLE_CORES" not in env  # inherited, it would put every replica on core 0
    assert (env[THREADS_ENV], env["OMP_NUM_THREADS"], env[BACKEND_ENV]) == ("3", "3", "neuron")
    assert env[head.MARKER_ENV] == "marker"
    assert env["RAY_SERVE_BATCH_SIZE_BUCKETS"] == "1,2,3,4,5,6"  # each batch size counted apart


def test_a_missing_ray_is_named_with_the_setup_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(EngineError) as refused:
        head.require_ray()
    assert refused.value.fix is not None and "./setup.sh --ray" in refused.value.fix


def test_a_busy_inference_port_is_named_before_ray_starts(tmp_path):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(EngineError, match=f"port {port} on 127.0.0.1 is already in use"):
            head.pick_http_port(ServingConfig(inference_port=port))


# --- the package -------------------------------------------------------------------------------------------------


def test_the_package_holds_the_model_and_the_deployments_code_and_says_what_is_inside(tmp_path):
    from serving.contract import CLASS_NAMES, ModelInfo

    source = tmp_path / "traced"
    source.mkdir()
    info = ModelInfo(
        kind="bi-encoder",
        backend="cpu",
        batch_size=2,
        max_length=32,
        buckets=[16, 32],
        model_files={16: "model_16.pt", 32: "model_32.pt"},
        tokenizer_files=["tokenizer.json"],
        class_names=list(CLASS_NAMES),
        source="test",
    )
    info.write(source)
    for name in ("model_16.pt", "model_32.pt", "tokenizer.json"):
        (source / name).write_bytes(name.encode())
    package = package_step.package(TracedModel(model_dir=source, info=info), tmp_path / "store")
    assert package.path == tmp_path / "store" / "bert-max_length32-batch_size2.serve"
    inside = sorted(str(p.relative_to(package.path)) for p in package.path.rglob("*") if p.is_file())
    assert inside == sorted(
        [
            "package.json",
            "model/model_info.json",
            "model/model_16.pt",
            "model/model_32.pt",
            "model/tokenizer.json",
            *(f"serving/{name}" for name in package_step.SERVING_FILES),
        ]
    )
    manifest = json.loads((package.path / "package.json").read_text())
    assert manifest["entry_point"] == "serving.ray_deployment:ParaphraseReplica"
    assert manifest["files"]["model/model_32.pt"]["bytes"] == len(b"model_32.pt")


def test_an_incomplete_traced_model_is_refused_naming_what_is_missing(tmp_path):
    from serving.contract import CLASS_NAMES, ModelInfo

    info = ModelInfo(
        kind="bi-encoder",
        backend="cpu",
        batch_size=2,
        max_length=32,
        buckets=[32],
        model_files={32: "model_32.pt"},
        class_names=list(CLASS_NAMES),
        source="test",
    )
    (tmp_path / "traced").mkdir()
    info.write(tmp_path / "traced")
    with pytest.raises(EngineError, match="model_32.pt"):
        package_step.package(TracedModel(model_dir=tmp_path / "traced", info=info), tmp_path / "store")


# --- Neuron: the core Ray gave a replica, recorded ---------------------------------------------------------------


def test_a_core_given_to_two_live_replicas_is_refused_naming_both(tmp_path):
    record_core(tmp_path, 1, os.getpid())
    assert core_claims(tmp_path) == {1: os.getpid()}
    with pytest.raises(RuntimeError, match=f"NeuronCore 1 was given to pid 1 but live pid {os.getpid()} holds it"):
        record_core(tmp_path, 1, 1)


# --- Serve's figures from Prometheus text ------------------------------------------------------------------------

PROMETHEUS = """\
# TYPE ray_serve_http_request_latency_ms histogram
ray_serve_http_request_latency_ms_bucket{{application="m",le="10.0"}} {fast}
ray_serve_http_request_latency_ms_bucket{{application="m",le="100.0"}} {total}
ray_serve_http_request_latency_ms_bucket{{application="m",le="+Inf"}} {total}
ray_serve_http_request_latency_ms_count{{application="m"}} {total}
ray_serve_http_request_latency_ms_sum{{application="m"}} {sum}
ray_serve_http_request_latency_ms_bucket{{application="other",le="+Inf"}} 1000.0
ray_serve_http_request_latency_ms_count{{application="other"}} 1000.0
ray_serve_http_request_latency_ms_sum{{application="other"}} 99999.0
# TYPE ray_serve_deployment_processing_latency_ms histogram
ray_serve_deployment_processing_latency_ms_bucket{{deployment="m",replica="a",le="+Inf"}} {requests}
ray_serve_deployment_processing_latency_ms_count{{deployment="m",replica="a"}} {requests}
ray_serve_deployment_processing_latency_ms_sum{{deployment="m",replica="a"}} 1.0
# TYPE ray_serve_batches_processed counter
ray_serve_batches_processed_total{{deployment="m"}} {batches}
"""


def scraped(fast: float, total: float, total_ms: float, batches: float, requests: float) -> metrics.Scrape:
    text = PROMETHEUS.format(fast=fast, total=total, sum=total_ms, batches=batches, requests=requests)
    return metrics.parse(text, "m")


def test_a_window_is_the_difference_of_two_scrapes_of_this_deployment_alone():
    before = scraped(fast=10, total=10, total_ms=50, batches=5, requests=10)
    after = scraped(fast=10, total=110, total_ms=5050, batches=25, requests=110)
    window = after.histograms["request_ms"].minus(before.histograms["request_ms"])
    stat_ = window.stat()
    assert stat_ is not None and stat_.count == 100  # the other application's thousand requests are not ours
    assert stat_.mean == pytest.approx(50.0)  # (5050 - 50) / 100
    # every request of the window fell between 10 and 100 ms: the median is estimated inside that bucket
    assert 10.0 < stat_.p50 < 100.0 and math.isnan(stat_.max)
    served = after.histograms["replica_ms"].minus(before.histograms["replica_ms"])
    assert served.count / (after.batches - before.batches) == pytest.approx(5.0)  # 100 requests in 20 batches


def test_batch_sizes_are_counted_per_size_from_a_bucket_each():
    histogram = metrics.Histogram(buckets={1.0: 2.0, 2.0: 2.0, 3.0: 5.0, 4.0: 5.0, 5.0: 5.0, 6.0: 12.0, math.inf: 12.0})
    assert metrics.sizes(histogram) == {1: 2, 3: 3, 6: 7}
    assert metrics.fill({1: 2, 3: 3, 6: 7}) == pytest.approx((2 + 9 + 42) / 12)


def test_rays_own_figures_survive_a_dump_of_the_engine_figures():
    from tasks.measure.results import Figures, ServerTimes

    times = ServerTimes(source="test", batch_sizes={6: 3}, batch_wait_ms=None)
    dumped = Figures(times=times).model_dump(mode="json")["times"]
    assert dumped["batch_sizes"] == {"6": 3} and "batch_wait_ms" in dumped and "replica_ms" in dumped


def test_a_quantile_is_read_linearly_inside_its_bucket_and_no_requests_means_no_figure():
    histogram = metrics.Histogram(buckets={10.0: 50.0, 20.0: 100.0, math.inf: 100.0}, count=100.0, total=1000.0)
    assert histogram.quantile(0.5) == pytest.approx(10.0)
    assert histogram.quantile(0.75) == pytest.approx(15.0)
    assert metrics.Histogram().stat() is None  # absent, never zero


# --- the replica's request parsing (needs Ray: it imports the deployment) --------------------------------------


def test_form_values_stay_bytes_so_a_field_that_is_not_utf8_is_refused_as_such():
    pytest.importorskip("ray.serve", reason="the deployment module imports Ray Serve: ./setup.sh --ray")
    from serving.model import parse_request
    from serving.ray_deployment import form_fields

    assert form_fields(b"seq_0=caf%C3%A9+au+lait&seq_1=x%26y") == {"seq_0": "café au lait".encode(), "seq_1": b"x&y"}
    with pytest.raises(ValueError, match="seq_0 is not valid UTF-8 text"):
        parse_request(form_fields(b"seq_0=%FF%FE%FD&seq_1=hello"))
