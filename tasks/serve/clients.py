"""Clients of the served model's inference endpoint as the tutorial's client used TorchServe's: form fields
seq_0 / seq_1, answers read back as Predictions (label text, HTTP status, latency, the handler's headers if any).
Any engine: the endpoint is all they know (tasks/engines/seam.py, the HTTP contract)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import httpx
from pydantic import BaseModel

from serving.contract import CLASS_NAMES


class Endpoint(Protocol):
    """Where the served model answers and the header that carries the token: a started server of any engine."""

    @property
    def inference_url(self) -> str: ...

    def inference_headers(self) -> dict[str, str]: ...


class Prediction(BaseModel):
    check: str = ""
    seq_0: str
    seq_1: str
    expected: str
    answer: str
    status_code: int
    latency_ms: float
    probability: float | None = None
    truncated: bool | None = None

    @property
    def correct(self) -> bool:
        return self.status_code == 200 and self.answer == self.expected


class Inference:
    """The inference endpoint as the tutorial's client used it, answers turned into Predictions."""

    def __init__(self, server: Endpoint, model_name: str, class_names: list[str], timeout: float = 120.0):
        self.url = f"{server.inference_url}/predictions/{model_name}"
        self.client = httpx.Client(headers=server.inference_headers(), timeout=timeout)
        # Checks speak the tutorial's labels; a model with its own id2label answers in those (its first two:
        # index 0 = not paraphrase, 1 = paraphrase).
        self.names = dict(zip(CLASS_NAMES, class_names, strict=False))

    def close(self) -> None:
        self.client.close()

    def send(self, seq_0: str, seq_1: str, expected: str, check: str = "", **request: Any) -> Prediction:
        """POST one pair (form fields, unless `request` says how) and read the answer."""
        request = request or {"data": {"seq_0": seq_0, "seq_1": seq_1}}
        started = time.monotonic()
        try:
            answer = self.client.post(self.url, **request)
        except httpx.HTTPError as error:
            return Prediction(
                check=check,
                seq_0=seq_0,
                seq_1=seq_1,
                expected=self.names.get(expected, expected),
                answer=f"{type(error).__name__}: {error}",
                status_code=0,
                latency_ms=(time.monotonic() - started) * 1000,
            )
        return Prediction(
            check=check,
            seq_0=seq_0,
            seq_1=seq_1,
            expected=self.names.get(expected, expected),
            answer=_answer_text(answer),
            status_code=answer.status_code,
            latency_ms=(time.monotonic() - started) * 1000,
            probability=_float(answer.headers.get("X-Paraphrase-Probability")),
            truncated={"true": True, "false": False}.get(answer.headers.get("X-Truncated", "")),
        )

    def send_all(self, cases: list[tuple[str, str, str]], check: str, workers: int) -> list[Prediction]:
        """All at once (seq_0, seq_1, the expected label each), so the server batches them together as the
        tutorial's threads did."""

        def one(case: tuple[str, str, str]) -> Prediction:
            seq_0, seq_1, expected = case
            return self.send(seq_0, seq_1, expected, check=check)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(one, cases))


def _answer_text(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.text[:300]
    if answer.status_code == 200 and isinstance(body, list) and len(body) == 1:
        return str(body[0])
    return str(body.get("message") or body.get("error") or body)[:300] if isinstance(body, dict) else str(body)[:300]


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
