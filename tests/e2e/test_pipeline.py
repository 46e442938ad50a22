"""The whole pipeline once, for real: traced embedded model, real TorchServe -- and, where the extra [ray] is
installed (./setup.sh --tests installs it), real Ray Serve after it on the same graph: `--engines torchserve,ray`,
the side by side a team moving off TorchServe reads -- real Prefect server."""

import filecmp
import importlib.util
import json
import re
from pathlib import Path

import httpx
import jsonschema
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

import tasks.engines.ray.head
import tasks.serve.server
from flows import stop as stop_cli
from flows.pipeline import validate
from flows.stages import STAGES
from tasks.common import backends
from tasks.common.config import MRPC_DEV_FILE
from tasks.common.parameters import read
from tasks.common.polling import wait_until
from tasks.common.ports import listeners
from tasks.measure.history import figures_of
from tasks.serve.server import load_record
from tests.e2e.conftest import SMALL_BATCH, SMALL_LENGTH, assert_server_gone
from tests.nights import config_leaves
from tools.summary_schema import DOC, published

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run(prefect_server, tmp_path_factory):
    """One real pipeline run; every key it read or wrote is remembered for the leak checks: TorchServe's, Ray's
    inference token and Ray's own."""
    seen_keys = []
    real_read_keys, real_write_tokens = tasks.serve.server.read_keys, tasks.engines.ray.head.write_tokens

    def spy(path):
        keys = real_read_keys(path)
        seen_keys.append(keys)
        return keys

    def spy_ray(server_dir, inference):
        written = real_write_tokens(server_dir, inference)
        ray_tokens.extend(path.read_text() for path in written if path is not None)
        return written

    ray_tokens: list[str] = []
    runs_dir = tmp_path_factory.mktemp("runs")
    # --accuracy-file: the MRPC dev split's first pairs (a user's MRPC file), scored on each engine.
    accuracy_file = tmp_path_factory.mktemp("accuracy") / "msr_paraphrase_dev_head.tsv"
    accuracy_file.write_text("".join(MRPC_DEV_FILE.read_text().splitlines(keepends=True)[: 1 + ACCURACY_PAIRS]))
    overrides = OVERRIDES | {"runs_dir": str(runs_dir), "checks.accuracy_file": str(accuracy_file)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tasks.serve.server, "read_keys", spy)
        patch.setattr(tasks.engines.ray.head, "write_tokens", spy_ray)
        state = validate(overrides=overrides, return_state=True)
    summary = state.result()
    return {
        "state": state,
        "summary": summary,
        "run_dir": runs_dir / "latest",
        "overrides": overrides,
        "keys": seen_keys,
        "ray": ray_tokens,
    }


def engine_checks(summary: dict, engine: str) -> list[dict]:
    return [c for c in summary["checks"] if c["engine"] == engine]


# Both engines where Ray is installed; TorchServe alone where it is not (Ray's assertions then skip, saying why).
RAY = importlib.util.find_spec("ray") is not None
ENGINES = ["torchserve", "ray"] if RAY else ["torchserve"]
needs_ray = pytest.mark.skipif(not RAY, reason="Ray Serve is not installed here: ./setup.sh --ray (--tests adds it)")

# The module's run: the default night, shortened, on each engine.
OVERRIDES = {
    "serving.engines": ENGINES,
    "serving.free_ports": True,
    "benchmark.concurrency": 12,
    "benchmark.duration": 4,
    "benchmark.warmup": 1,
    "benchmark.ceiling_seconds": 1,
    "benchmark.client_check_seconds": 1,
    "benchmark.single_client_seconds": 2,
    # A short capacity search: steps of 2 s, 8 s in all. At p90 (the night's is p99) a step needs 10 requests
    # (beyond / (1 - 0.9)), so a step fits however slow a busy host serves; at p99 it needs 100, which at ~10
    # requests/s (seen on a busy host) no step of the 8 s fits.
    "benchmark.capacity.percentile": 90,
    "benchmark.capacity.min_step_seconds": 2,
    "benchmark.capacity.beyond": 1,
    "benchmark.capacity.step_warmup": 0.5,
    "benchmark.capacity.budget_seconds": 8,
    # compare-buckets runs: the default's four buckets against 128 alone, 1 s of load each (labels are compared
    # on a fixed sample whatever the seconds).
    "benchmark.compare_seconds": 1,
}


def test_auto_backend_is_cpu_here_with_one_worker_per_physical_core(run):
    resolved = run["summary"]["resolved"]
    assert resolved["backend"] == "cpu"
    assert resolved["initial_workers"] == resolved["cores"] == backends.physical_cores()
    assert json.loads((run["run_dir"] / "model" / "model_info.json").read_text())["backend"] == "cpu"


def test_the_archive_carries_the_traced_shape_so_register_serves_it_at_that_batch_size(run):
    info = json.loads((run["run_dir"] / "model" / "model_info.json").read_text())
    assert (info["batch_size"], info["max_length"], info["buckets"]) == (6, 128, [40, 56, 80, 128])
    model_log = (run["run_dir"] / "server" / "logs" / "model_log.log").read_text()
    assert "batch_size=6 max_length=128" in model_log  # the worker read the same facts from the .mar


def test_every_stage_completes_and_is_timed(run):
    """trace and archive once; then each engine's stages, TorchServe's then Ray Serve's, each named with its engine.
    compare-buckets is TorchServe's (it registers a second model through its management API): skipped on Ray,
    saying so."""
    summary = run["summary"]
    assert summary["status"] == "ok"
    expected = [(name, None) for name in STAGES[:2]] + [(name, e) for e in ENGINES for name in STAGES[2:]]
    assert [(s["name"], s["engine"]) for s in summary["stages"]] == expected
    skipped = [s for s in summary["stages"] if s["status"] != "ok"]
    assert all(s["status"] == "ok" and s["seconds"] > 0 for s in summary["stages"] if s not in skipped)
    assert [(s["name"], s["engine"]) for s in skipped] == [("compare-buckets", "ray")] * RAY, skipped
    assert all("TorchServe only" in s["reason"] for s in skipped)


CHECKS = [
    "tutorial pairs (full batch)",
    "partial batch",
    "golden pairs",
    "parity with in-process model",
    "malformed requests isolated",
    "texts over max_length 128 truncated",
    "requests without the token refused",
    "accuracy",
]
ACCURACY_PAIRS = 36


def test_every_correctness_check_runs_and_passes_on_each_engine(run):
    """The same checks with the same pass rules on both engines; a request without the token gets each engine's
    own refusal: TorchServe 0.12's 400 (InvalidKeyException), Ray Serve's 401."""
    for engine, refusal in zip(ENGINES, (400, 401), strict=False):
        checks = engine_checks(run["summary"], engine)
        assert [c["name"] for c in checks] == CHECKS, engine
        assert all(c["passed"] for c in checks), [c["detail"] for c in checks if not c["passed"]]
        assert checks[0]["detail"].startswith("6/6")
        token = checks[-2]
        assert token["metrics"]["statuses"] == {"no token": refusal, "a wrong token": refusal}, engine


def test_benchmark_reports_throughput_and_latency(run):
    bench = run["summary"]["benchmark"]
    assert bench["concurrency"] == 12 and bench["errors"] == 0
    assert bench["requests_per_s"] > 0 and bench["requests"] > 0
    latency = bench["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


def test_benchmark_measures_the_ceiling_the_client_the_server_and_a_lone_request(run):
    bench = run["summary"]["benchmark"]
    assert bench["error_rate"] == 0 and bench["pairs"].startswith(("msr_paraphrase_dev.tsv", "golden_pairs.yaml"))
    ceiling = bench["ceiling"]
    assert ceiling["batch_size"] == 6 and ceiling["inferences_per_s"] > 0 and ceiling["lone_batch_latency_ms"] > 0
    assert bench["served_over_ceiling"] == pytest.approx(bench["inferences_per_s"] / ceiling["inferences_per_s"])
    assert bench["client"]["requests_per_s"] > bench["requests_per_s"]
    server = bench["server"]
    assert server["batches"] > 0 and server["queue_ms"]["count"] > 0 and server["handler_ms"]["p50"] > 0
    assert 1 <= server["mean_batch_fill"] <= 6
    assert bench["single_client"]["requests"] > 0 and bench["single_client"]["over_batch_latency"] > 0
    assert bench["cpu"]["workers_cores"] > 0
    # Its parameters (a runs_dir of its own) are no earlier run's, whichever tests ran before it.
    assert bench["regression"]["status"] == "no history"
    on_disk = json.loads((run["run_dir"] / "benchmark.json").read_text())
    assert on_disk["requests"] == bench["requests"] and on_disk["timeline"]
    assert (run["run_dir"] / "benchmark.png").read_bytes().startswith(b"\x89PNG")


def test_the_capacity_search_starts_where_the_closed_loop_was_and_reports_the_highest_passing_step(run):
    bench = run["summary"]["benchmark"]
    """A night searches it (the default, not an override). Its pass rule and step length are checked against a server
    with a known latency curve (tests/e2e/test_capacity.py, tests/unit/test_capacity.py); here, what the night
    makes of it."""
    capacity = bench["capacity"]
    assert capacity["arrivals"] == "poisson" and capacity["percentile"] == 90 and capacity["bound_ms"] == 1000
    steps = capacity["steps"]
    assert steps and steps[0]["rate"] == pytest.approx(bench["requests_per_s"]) == capacity["start_rate"]
    assert all(step["achieved"] > 0 and step["p90"] <= step["p99"] for step in steps)
    passing = [step["rate"] for step in steps if step["passed"]]
    assert capacity["rate"] == (max(passing) if passing else None)
    assert sum(step["seconds"] + 0.5 for step in steps) <= 8 + 1  # its own budget (measured, give or take a batch)
    assert (run["run_dir"] / "capacity.png").read_bytes().startswith(b"\x89PNG")


def test_buckets_serve_the_same_labels_as_max_length_only_and_are_compared_in_the_run(run):
    """Length buckets through the real pipeline: one graph per bucket in the .mar, batches routed by length, the
    same answers as the single max_length graph, and the comparison reported in the run."""
    summary = run["summary"]
    info = json.loads((run["run_dir"] / "model" / "model_info.json").read_text())
    assert set(info["model_files"]) == {"40", "56", "80", "128"}
    parity = next(c for c in summary["checks"] if c["name"] == "parity with in-process model")
    assert parity["passed"] and parity["metrics"]["label_mismatches"] == 0  # bucketed vs max_length in-process

    comparison = summary["bucket_comparison"]
    assert comparison["buckets"] == [40, 56, 80, 128] and comparison["max_length"] == 128
    assert comparison["labels_compared"] > 0
    assert comparison["labels_identical"] == comparison["labels_compared"]
    assert comparison["bucketed_inferences_per_s"] > 0 and comparison["single_inferences_per_s"] > 0
    model_log = (run["run_dir"] / "server" / "logs" / "model_log.log").read_text()
    assert "loaded buckets [40, 56, 80, 128]" in model_log and "loaded buckets [128]" in model_log
    # The single-bucket archive, measured and dropped, is not kept beside the bucketed one (its graph is model/'s).
    assert sorted(p.name for p in (run["run_dir"] / "model_store").glob("*.mar")) == [
        "bert-max_length128-batch_size6.mar"
    ]


def test_run_directory_holds_model_archive_server_files_and_summary(run):
    run_dir = run["run_dir"]
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["run_dir"] == str(run_dir.resolve())
    for path in [
        "model/model_128.pt",
        "model/model_40.pt",
        "model/model_info.json",
        "model_store/bert-max_length128-batch_size6.mar",
        "server/config.properties",
        "server/logs/ts_log.log",
        "server/logs/model_log.log",
    ]:
        assert (run_dir / path).is_file(), path
    assert set(on_disk["versions"]) >= {"python", "torch", "transformers", "torchserve", "prefect"}
    assert len(on_disk["provenance"]["git"]["commit"]) == 40 and on_disk["provenance"]["config_hash"]
    for name in on_disk["pictures"].values():
        assert Path(name).parent == run_dir.resolve() and Path(name).read_bytes().startswith(b"\x89PNG")


def test_no_torchserve_process_outlives_the_run(run):
    server = tasks.serve.server.load_record(run["run_dir"] / "server")
    assert len(server.processes) >= 3  # launcher, java frontend, workers
    assert_server_gone(server)


@needs_ray
def test_nothing_of_ray_outlives_the_run(run):
    """Serve and the Ray instance stopped: no process of it by record, process group or marker, nothing listening
    on its ports, its short temp link and its tokens gone; its logs stay under the run's server-ray/ray."""
    started = tasks.engines.ray.head.load_record(run["run_dir"] / "server-ray")
    assert len(started.processes) >= 5  # the head, GCS, raylet, Serve's controller and proxy, the replicas
    assert tasks.engines.ray.head.leftovers(started) == []
    assert listeners(started.ports.values()) == {}
    assert not started.temp_link.exists() and not started.token_file.exists()
    assert list((started.server_dir / "ray").glob("session_2*/logs/serve/replica_*.log"))


@needs_ray
def test_both_engines_serve_the_same_graph_side_by_side(run):
    """The night's side by side: one graph from one trace (Ray's package holds the traced files themselves), the
    same labels from both engines on every checked pair, each engine's figures -- Ray's own queue, replica and
    batch figures in place of TorchServe's handler phases, which it lacks: absent, never faked."""
    summary, run_dir = run["summary"], run["run_dir"]
    served = run_dir / "model_store" / "bert-max_length128-batch_size6.serve" / "model" / "model_128.pt"
    assert filecmp.cmp(run_dir / "model" / "model_128.pt", served, shallow=False)
    side = summary["side_by_side"]
    assert [c["engine"] for c in side["engines"]] == ENGINES and summary["engine"] == "torchserve"
    assert side["labels"]["pairs"] >= 20 and side["labels"]["equal"] == side["labels"]["pairs"]
    torchserve, ray = side["engines"]
    assert torchserve["benchmark"] == json.loads(json.dumps(summary["benchmark"]))  # the top level is TorchServe's
    for column in (torchserve, ray):
        bench = column["benchmark"]
        assert column["status"] == "ok" and column["checks_passed"] == column["checks"] == len(CHECKS)
        assert bench["engine"] == column["engine"] and bench["errors"] == 0 and bench["inferences_per_s"] > 0
        assert bench["served_over_ceiling"] > 0 and bench["capacity"]["steps"]
        assert column["start_s"] > 0 and column["register_s"] > 0 and bench["memory"]["total_rss_mib"] > 0
        assert bench["model_load"]["worker_load_ms"] > 0
    assert torchserve["benchmark"]["fingerprint"] != ray["benchmark"]["fingerprint"]  # never compared
    # One graph, one threshold: an MRPC file given with --accuracy-file scores the same on both engines.
    accuracy = [engine_checks(summary, engine)[-1] for engine in ENGINES]
    agreed = [c["metrics"]["agreement_with_in_process"] for c in accuracy]
    assert agreed == [ACCURACY_PAIRS] * len(ENGINES), accuracy  # every pair scored, each label the in-process one
    assert len({c["metrics"]["accuracy"] for c in accuracy}) == 1 and 0 < accuracy[0]["metrics"]["accuracy"] <= 1
    assert torchserve["benchmark"]["accuracy"] == ray["benchmark"]["accuracy"] == accuracy[0]["metrics"]["accuracy"]
    times = ray["benchmark"]["server"]
    assert times["source"].endswith("window)") and times["queue_ms"]["count"] > 0 and times["replica_ms"]["p50"] > 0
    assert sum(times["batch_sizes"].values()) == times["batches"] > 0 and times["preprocess_ms"] is None
    assert torchserve["benchmark"]["server"]["preprocess_ms"]["count"] > 0
    assert ray["benchmark"]["cpu"]["workers_cores"] > 0 and ray["benchmark"]["cpu"]["frontend_cores"] > 0
    assert json.loads((run_dir / "benchmark-ray.json").read_text())["engine"] == "ray"


def test_results_are_artifacts_of_the_flow_run(run):
    flow_run_id = run["state"].state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    # An ad-hoc run on the CPU: every key ends in adhoc-cpu, so a deployment's artifacts are not overwritten; Ray
    # Serve's own in adhoc-cpu-ray, so its history is its own.
    keyed = [a for a in artifacts if a.key]  # progress artifacts have no key
    by_key = {a.key.removesuffix("-adhoc-cpu"): a for a in keyed}
    assert all(a.key.endswith(("-adhoc-cpu", "-adhoc-cpu-ray")) for a in keyed), [a.key for a in keyed]
    kinds = {"summary", "predictions", "benchmark", "outcome", "trend"}
    assert kinds | {"run-config"} <= set(by_key)
    if RAY:
        assert {f"{kind}-adhoc-cpu-ray" for kind in kinds} | {"engines-adhoc-cpu"} <= {a.key for a in keyed}
        side = by_key["engines"].data
        assert "| figure | torchserve | ray |" in side and "checked pairs every engine answered: equal" in side
        ray_summary = next(a.data for a in keyed if a.key == "summary-adhoc-cpu-ray")
        assert "**ok**" in ray_summary and "ray's times:" in ray_summary
    summary = by_key["summary"].data
    assert "**ok**" in summary and "Served / in-process" in summary
    assert "MLPerf's scenarios, as measured here: SingleStream p90" in summary and "| offered requests/s |" in summary
    for alt in ("throughput and latency", "latency histogram", "capacity search"):  # pictures the UI shows
        assert f"![{alt}](data:image/png;base64,iVBORw0KGgo" in summary
    assert "- Chart: `" not in summary
    figures = figures_of(by_key["benchmark"].data)
    assert figures["inferences_per_s"] > 0 and figures["latency_ms p90"] > 0 and figures["fingerprint"]
    predictions = (
        json.loads(by_key["predictions"].data)
        if isinstance(by_key["predictions"].data, str)
        else by_key["predictions"].data
    )
    assert sum(row["check"] == "tutorial pairs (full batch)" for row in predictions) == 6
    assert {row["check"] for row in predictions} >= {"golden pairs", "malformed requests isolated"}
    trend = by_key["trend"].data
    assert trend.startswith("# Trend: adhoc-cpu") and "![trend](data:image/png;base64," in trend
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(flow_run_id).name
    first = [line for line in trend.splitlines() if line.startswith("| ")][1]
    assert first.startswith(f"| {name} | ") and "| ok |" in first  # this run on top
    config = (
        json.loads(by_key["run-config"].data)
        if isinstance(by_key["run-config"].data, str)
        else by_key["run-config"].data
    )
    provenance = {row["name"]: row["value"] for row in config if row["section"] == "provenance"}
    assert {"git.commit", "git.dirty", "instance_type", "compiler_args", "config_hash"} <= set(provenance)


def test_no_key_in_summary_artifacts_or_flow_log(run):
    keys = {secret for k in run["keys"] for secret in (k.inference.get_secret_value(), k.management.get_secret_value())}
    assert keys, "the run read no keys: token auth was not on"
    assert len(run["ray"]) == 2 * RAY  # Ray's key file (the inference token's) and Ray's own token
    keys |= {secret for text in run["ray"] for secret in _secrets(text)}
    flow_run_id = run["state"].state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    texts = [(run["run_dir"] / name).read_text() for name in ("summary.json", "server/server.json", "flow.log")]
    texts += [(run["run_dir"] / "server-ray" / "ray.json").read_text()] if RAY else []
    texts += [str(a.data) for a in artifacts] + [log.message for log in logs]
    assert logs, "no flow log came back from the Prefect API"
    leaked = [key for key in keys for text in texts if key in text]
    assert leaked == []


def test_the_run_directory_holds_the_runs_own_log_from_its_first_stage_to_its_summary(run):
    """flow.log: what the terminal showed of the run -- Prefect's lines and ours -- beside its summary."""
    lines = (run["run_dir"] / "flow.log").read_text().splitlines()
    assert f"run directory {run['run_dir'].resolve()}" in lines[0] and re.match(r"\d{4}-\d\d-\d\d ", lines[0])
    for stage in STAGES:
        assert any(re.search(rf"Task run '{stage}-\w+' - Finished in state Completed", line) for line in lines), stage
    assert any(line.endswith(f"summary: {run['run_dir'].resolve() / 'summary.json'}") for line in lines)
    assert any("retention: " in line for line in lines)  # the night's last act: runs/ pruned, the cache bounded


def test_summary_json_passes_its_published_schema_and_records_the_config_the_run_read(run):
    on_disk = json.loads((run["run_dir"] / "summary.json").read_text())
    jsonschema.Draft202012Validator(json.loads(published(DOC.read_text()))).validate(on_disk)
    read_again, _ = read(None, None, run["overrides"])
    assert on_disk["config"] == read_again.model_dump(mode="json")


def _secrets(text: str) -> list[str]:
    """The keys in a key file (TorchServe's JSON shape), or a token file's text."""
    try:
        return [entry["key"] for entry in json.loads(text).values()]
    except ValueError:
        return [text]


def _run_page_lines(flow_run_id) -> list[str]:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs if log.message.startswith("run page: ")]


def test_the_flow_log_ends_with_the_run_page_in_the_current_ui(run):
    flow_run_id = run["state"].state_details.flow_run_id
    # The flow's last log lines reach the API in a batch.
    pages = wait_until(lambda: _run_page_lines(flow_run_id), 60, "the run page in the flow's log")
    assert len(pages) == 1 and pages[0].endswith(f"/runs/flow-run/{flow_run_id}"), pages
    assert "/flow-runs/" not in pages[0]  # not the old UI's route


def test_keep_serving_leaves_a_working_server_that_the_next_night_leaves_and_flows_stop_ends(
    run, small_model, tmp_path
):
    """Run from a user's own minimal config file (the small shape, nothing else): in every key neither it nor an
    override sets, its summary.json records the default night, as the module's default run does. The next night
    in the same runs directory does not take the kept server for a crashed run's: it still answers after it."""
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"serving:\n  batch_size: {SMALL_BATCH}\n  max_length: {SMALL_LENGTH}\n")
    overrides = {
        "runs_dir": str(tmp_path),
        "serving.free_ports": True,
        "benchmark.enabled": False,
        "keep_serving": True,
        "serving.initial_workers": 1,
    }
    kept_dir = tmp_path / "latest"
    try:
        summary = validate(config_file=str(mine), overrides=overrides)
        kept_dir = Path(summary["run_dir"])  # runs/latest moves on with the next night
        server = tasks.serve.server.load_record(tmp_path / "latest" / "server")
        assert summary["status"] == "ok" and summary["kept_serving"] is True
        assert next(s for s in summary["stages"] if s["name"] == "stop")["status"] == "skipped"
        assert summary["server"]["inference_url"] == server.inference_url
        model_name = f"bert-max_length{SMALL_LENGTH}-batch_size{SMALL_BATCH}"

        def answer() -> list:
            answered = httpx.post(
                f"{server.inference_url}/predictions/{model_name}",
                data={"seq_0": "A cat sat on the mat.", "seq_1": "Stock markets fell sharply today."},
                headers=server.inference_headers(),
                timeout=60,
            )
            assert answered.status_code == 200, answered.text
            return answered.json()

        assert answer() == ["not paraphrase"]
        next_night = validate(config_file=str(mine), overrides={**overrides, "keep_serving": False})
        assert next_night["status"] == "ok", [s for s in next_night["stages"] if s["error"]]
        assert answer() == ["not paraphrase"]  # left serving
        assert load_record(kept_dir / "server").kept is True
    finally:
        assert stop_cli.main([str(kept_dir)]) == 0
    assert_server_gone(server)
    night, default = config_leaves(summary["config"]), config_leaves(run["summary"]["config"])
    given = {"serving.batch_size", "serving.max_length", *overrides, *run["overrides"]}
    assert {key for key in default if night[key] != default[key]} - given == set()
    assert night["model.threshold"] == 0.6821 and night["serving.length_buckets"] == [40, 56, 80, 128]
