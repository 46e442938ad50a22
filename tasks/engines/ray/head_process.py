"""The Ray instance of one run, as a process: `python -m tasks.engines.ray.head_process REQUEST UP_FILE`.

start (head.py) launches it in a session of its own and records it. It is the driver that owns a local Ray
cluster -- ray.init starts the GCS, the raylet, the dashboard agent (its job API and dashboard off: see
head.py) -- and Serve's controller and HTTP proxy (serve.start), then writes UP_FILE (the GCS address, no
secret) and waits. On SIGTERM or SIGINT it shuts Serve down (each replica gets its
graceful shutdown), then Ray, and exits 0; stop escalates if that takes too long.

Ray ties the processes it starts to this one: on Linux they get PR_SET_PDEATHSIG, so a kill -9 of it takes the
GCS and raylet with it, and the raylet's workers follow the raylet. (Not all: the dashboard and runtime-env
agents were seen to outlive it; stop sweeps what is left by the run's marker, head.py.)

Everything it needs comes in REQUEST (JSON) and its environment (RAY_AUTH_MODE=token and the token's file,
set by head.py): nothing here reads the run's configuration, and it imports nothing of the pipeline but this.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

NAMESPACE = "bert-serving-validation"


def start_ray(request: dict) -> dict:
    import ray
    from ray import serve

    ray.init(
        # Not serving.address: with --address set, Ray's own servers would bind it too (head.py's docstring).
        _node_ip_address=request["node_address"],
        include_dashboard=False,
        _temp_dir=request["temp_dir"],
        num_cpus=request["num_cpus"],
        num_gpus=request["num_gpus"],
        resources=request["resources"],
        object_store_memory=request["object_store_bytes"],
        _metrics_export_port=request["metrics_port"],
        # Serve's figures reach the metrics endpoint once per report; the default 10 s would blur a 30 s load.
        _system_config={"metrics_report_interval_ms": request["metrics_report_ms"]},
        namespace=NAMESPACE,
        log_to_driver=False,
    )
    serve.start(http_options={"host": request["address"], "port": request["http_port"], "location": "HeadOnly"})
    return {"gcs_address": ray.get_runtime_context().gcs_address}


def stop_ray() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def main() -> None:
    request_file, up_file = Path(sys.argv[1]), Path(sys.argv[2])
    stopping = threading.Event()
    # Installed before ray.init, then again after it (Ray's own handler would drain and exit 1): a stop that comes
    # while Ray starts is kept and honoured once it is up.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    up = start_ray(json.loads(request_file.read_text()))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    staged = up_file.with_suffix(".tmp")
    staged.write_text(json.dumps(up))
    staged.replace(up_file)  # whole or not at all: start reads it as soon as it exists
    print(f"Ray and Serve up: {up}", flush=True)
    while not stopping.wait(1.0):
        pass
    print("stopping Serve and Ray", flush=True)
    stop_ray()
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
