import pickle
import subprocess
import sys

import httpx
import pytest

from tasks.common import polling
from tasks.serve.register import RegisterError, _call, _register, scale, wait_workers_ready
from tests.unit.fake_time import TimeOn

NAME = "bert-max_length128-batch_size6"
PARAMS = {
    "url": f"{NAME}.mar",
    "model_name": NAME,
    "batch_size": 6,
    "max_batch_delay": 50,
    "initial_workers": 4,
    "synchronous": "true",
}


@pytest.fixture
def clock(fake_clock, monkeypatch):
    """The waits (tasks/common/polling.py) on a fake clock: a timeout passes without waiting for it."""
    monkeypatch.setattr(polling, "time", TimeOn(fake_clock))
    return fake_clock


@pytest.fixture
def worker():
    """A process standing in for a TorchServe worker; killed at the end if a test left it running."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def exits_during_the_wait(worker: subprocess.Popen, clock, monkeypatch) -> None:
    """The worker exits while the code under test waits for it: at its first sleep, as it would some time later."""

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        worker.kill()
        worker.wait()

    monkeypatch.setattr(polling.time, "sleep", sleep)


class FakeManagement:
    """A scripted management API: (method, path) -> list of responses (or of functions giving one, called
    when the request arrives), recording every call."""

    def __init__(self, script):
        self.script = {key: list(value) for key, value in script.items()}
        self.calls = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path, dict(request.url.params)))
        answers = self.script.get((request.method, request.url.path))
        if not answers:
            return httpx.Response(404, json={"message": "unexpected call"})
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer() if callable(answer) else answer

    def client(self):
        return httpx.Client(base_url="http://127.0.0.1:8081", transport=httpx.MockTransport(self))


def test_unreachable_api_is_retryable():
    api = FakeManagement({("GET", "/models"): [httpx.ConnectError("refused")]})
    with pytest.raises(RegisterError) as caught:
        _call(api.client(), "GET", "/models")
    assert caught.value.retryable is True
    assert "unreachable" in str(caught.value)


def test_server_error_is_retryable_but_not_insufficient_storage():
    api = FakeManagement(
        {("GET", "/a"): [httpx.Response(503, text="starting")], ("GET", "/b"): [httpx.Response(507, text="full")]}
    )
    with pytest.raises(RegisterError) as caught:
        _call(api.client(), "GET", "/a")
    assert caught.value.retryable is True and "503" in str(caught.value)
    assert _call(api.client(), "GET", "/b").status_code == 507


def test_workers_that_cannot_load_are_final():
    api = FakeManagement(
        {
            ("POST", "/models"): [
                httpx.Response(
                    500,
                    json={
                        "code": 500,
                        "type": "InternalServerException",
                        "message": "Failed to start workers for model x",
                    },
                )
            ]
        }
    )
    with pytest.raises(RegisterError) as caught:
        _call(api.client(), "POST", "/models")
    assert caught.value.retryable is False
    assert "Failed to start workers for model x" in str(caught.value)
    assert str(caught.value).endswith("\nfix: read the worker traceback below")


def test_a_retryable_error_stays_retryable_when_prefect_pickles_it():
    api = FakeManagement({("GET", "/a"): [httpx.Response(503, text="starting")]})
    with pytest.raises(RegisterError) as caught:
        _call(api.client(), "GET", "/a")
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is RegisterError and again.retryable is True and str(again) == str(caught.value)


def test_client_error_is_returned_for_the_caller_to_judge():
    api = FakeManagement({("GET", "/models/x"): [httpx.Response(404, json={"message": "no such model"})]})
    assert _call(api.client(), "GET", "/models/x").status_code == 404


def test_first_registration():
    api = FakeManagement({("POST", "/models"): [httpx.Response(200, json={"status": "ok"})]})
    assert _register(api.client(), PARAMS) == "registered"
    method, path, params = api.calls[0]
    assert (method, path) == ("POST", "/models")
    assert params["batch_size"] == "6" and params["max_batch_delay"] == "50" and params["initial_workers"] == "4"


def test_refused_registration_is_final_and_says_why():
    api = FakeManagement({("POST", "/models"): [httpx.Response(400, text="bad archive")]})
    with pytest.raises(RegisterError) as caught:
        _register(api.client(), PARAMS)
    assert caught.value.retryable is False
    assert "400" in str(caught.value) and "bad archive" in str(caught.value)


def test_409_with_same_batching_scales_the_existing_model():
    api = FakeManagement(
        {
            ("POST", "/models"): [httpx.Response(409, text="already registered")],
            ("GET", f"/models/{NAME}"): [
                httpx.Response(
                    200,
                    json=[
                        {"modelName": NAME, "modelVersion": "1.0", "batchSize": 6, "maxBatchDelay": 50, "workers": []}
                    ],
                )
            ],
            ("PUT", f"/models/{NAME}"): [httpx.Response(202, json={"status": "scaled"})],
        }
    )
    assert _register(api.client(), PARAMS) == "scaled existing"
    methods = [method for method, _, _ in api.calls]
    assert "DELETE" not in methods and methods.count("POST") == 1
    put = next(params for method, _, params in api.calls if method == "PUT")
    assert put["min_worker"] == "4" and put["max_worker"] == "4"


@pytest.mark.parametrize("registered", [{"batchSize": 8, "maxBatchDelay": 50}, {"batchSize": 6, "maxBatchDelay": 5000}])
def test_409_with_other_batching_replaces_the_model(registered):
    api = FakeManagement(
        {
            ("POST", "/models"): [httpx.Response(409, text="already registered"), httpx.Response(200, json={})],
            ("GET", f"/models/{NAME}"): [httpx.Response(200, json=[{"modelVersion": "2.0", **registered}])],
            ("DELETE", f"/models/{NAME}/2.0"): [httpx.Response(200, json={})],
        }
    )
    assert _register(api.client(), PARAMS) == "re-registered"
    assert [(m, p) for m, p, _ in api.calls] == [
        ("POST", "/models"),
        ("GET", f"/models/{NAME}"),
        ("DELETE", f"/models/{NAME}/2.0"),
        ("POST", "/models"),
    ]


def test_a_replaced_models_workers_have_exited_before_it_is_registered_again(worker, clock, monkeypatch):
    """On Neuron the new workers need the cores the old ones hold until their processes exit."""
    exits_during_the_wait(worker, clock, monkeypatch)
    at_second_post = []
    api = FakeManagement(
        {
            ("POST", "/models"): [
                httpx.Response(409, text="already registered"),
                lambda: at_second_post.append(worker.poll()) or httpx.Response(200, json={}),
            ],
            ("GET", f"/models/{NAME}"): [
                httpx.Response(200, json=[{"modelVersion": "1.0", "batchSize": 2, "workers": [{"pid": worker.pid}]}])
            ],
            ("DELETE", f"/models/{NAME}/1.0"): [httpx.Response(200, json={})],
        }
    )
    assert _register(api.client(), PARAMS) == "re-registered"
    assert at_second_post != [None]  # the old worker had exited when the model was registered again
    assert len(clock.sleeps) == 1  # it was waited for


def test_failed_unregister_stops_with_an_error():
    api = FakeManagement(
        {
            ("POST", "/models"): [httpx.Response(409)],
            ("GET", f"/models/{NAME}"): [httpx.Response(200, json=[{"modelVersion": "1.0", "batchSize": 1}])],
            ("DELETE", f"/models/{NAME}/1.0"): [httpx.Response(400, text="in use")],
        }
    )
    with pytest.raises(RegisterError, match="unregistering"):
        _register(api.client(), PARAMS)
    assert [m for m, _, _ in api.calls].count("POST") == 1


def test_wait_workers_ready_returns_when_all_ready(clock):
    api = FakeManagement(
        {
            ("GET", f"/models/{NAME}"): [
                httpx.Response(200, json=[{"workers": [{"status": "READY"}, {"status": "READY"}]}])
            ]
        }
    )
    wait_workers_ready(api.client(), NAME, 2, timeout=5)
    assert clock.sleeps == []


def test_wait_workers_ready_times_out_naming_states(clock):
    api = FakeManagement(
        {
            ("GET", f"/models/{NAME}"): [
                httpx.Response(200, json=[{"workers": [{"status": "READY"}, {"status": "UNLOADING"}]}])
            ]
        }
    )
    with pytest.raises(RegisterError, match="UNLOADING") as caught:
        wait_workers_ready(api.client(), NAME, 2, timeout=0.1)
    assert clock.now == pytest.approx(0.1)  # asked until the deadline
    assert caught.value.retryable is False  # a worker that won't load is a verdict, not a race
    assert "workers' log" in caught.value.fix


def test_wait_workers_ready_polls_until_the_workers_come_up(clock):
    loading = httpx.Response(200, json=[{"workers": [{"status": "READY"}, {"status": "LOADING"}]}])
    ready = httpx.Response(200, json=[{"workers": [{"status": "READY"}, {"status": "READY"}]}])
    api = FakeManagement({("GET", f"/models/{NAME}"): [loading, loading, ready]})
    wait_workers_ready(api.client(), NAME, 2, timeout=30)
    assert len(api.calls) == 3 and len(clock.sleeps) == 2


class _Server:
    """Just the management client of a Server, on the scripted API."""

    def __init__(self, api: FakeManagement):
        self.api = api

    def management(self, timeout: float = 30.0) -> httpx.Client:
        return self.api.client()


def _scaled_to_none(worker_pid: int) -> FakeManagement:
    return FakeManagement(
        {
            ("GET", f"/models/{NAME}"): [
                httpx.Response(200, json=[{"workers": [{"pid": worker_pid, "status": "READY"}]}]),
                httpx.Response(200, json=[{"workers": []}]),
            ],
            ("PUT", f"/models/{NAME}"): [httpx.Response(200, json={"status": "scaled"})],
        }
    )


def test_scaling_to_no_workers_returns_only_once_their_processes_have_exited(worker, clock, monkeypatch):
    """TorchServe answers the scale-down before its worker processes are gone; a NeuronCore is free only then."""
    exits_during_the_wait(worker, clock, monkeypatch)
    api = _scaled_to_none(worker.pid)
    scale(_Server(api), NAME, 0, timeout=30)
    assert worker.poll() is not None and len(clock.sleeps) == 1  # waited for, until it had exited
    assert ("PUT", f"/models/{NAME}", {"min_worker": "0", "max_worker": "0", "synchronous": "true"}) in api.calls


def test_a_dropped_worker_that_never_exits_fails_naming_its_pid(worker, clock):
    with pytest.raises(RegisterError, match=f"dropped workers still running after 1 s .*{worker.pid}"):
        scale(_Server(_scaled_to_none(worker.pid)), NAME, 0, timeout=1)
    assert clock.now == pytest.approx(1.0) and worker.poll() is None
