"""check: the tutorial's check, made to fail loudly instead of waiting for a person to read it.

batch_size concurrent requests -- the first half a paraphrase pair, the rest a non-paraphrase
pair -- sent as the tutorial's client sent them (form fields seq_0, seq_1). Every label must
be right.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from pydantic import BaseModel

from tasks.server import Server

# The tutorial's three sentences.
SEQUENCE_0 = "The company HuggingFace is based in New York City"
SEQUENCE_1 = "Apples are especially bad for your health"
SEQUENCE_2 = "HuggingFace's headquarters are situated in Manhattan"
PARAPHRASE = (SEQUENCE_0, SEQUENCE_2, "paraphrase")
NOT_PARAPHRASE = (SEQUENCE_0, SEQUENCE_1, "not paraphrase")


class CheckFailed(RuntimeError):
    """A check gave a wrong answer; the flow fails after stop, with every artifact written."""


class Prediction(BaseModel):
    seq_0: str
    seq_1: str
    expected: str
    answer: str
    status_code: int
    latency_ms: float

    @property
    def correct(self) -> bool:
        return self.status_code == 200 and self.answer == self.expected


class CheckResult(BaseModel):
    name: str
    passed: bool
    detail: str
    predictions: list[Prediction] = []


def predict(client: httpx.Client, url: str, seq_0: str, seq_1: str, expected: str) -> Prediction:
    answer = client.post(url, data={"seq_0": seq_0, "seq_1": seq_1})
    try:
        label = answer.json()[0] if answer.status_code == 200 else answer.text
    except (ValueError, IndexError, KeyError):
        label = answer.text
    return Prediction(
        seq_0=seq_0, seq_1=seq_1, expected=expected, answer=str(label),
        status_code=answer.status_code, latency_ms=answer.elapsed.total_seconds() * 1000,
    )


def tutorial_check(server: Server, model_name: str, batch_size: int, timeout: float = 120.0) -> CheckResult:
    half = batch_size // 2 or 1
    cases = [PARAPHRASE if i < half else NOT_PARAPHRASE for i in range(batch_size)]
    url = f"{server.inference_url}/predictions/{model_name}"
    with httpx.Client(headers=server.inference_headers(), timeout=timeout) as client:
        # All at once, so TorchServe batches them together as the tutorial's threads did.
        with ThreadPoolExecutor(max_workers=batch_size) as pool:
            predictions = list(pool.map(lambda case: predict(client, url, *case), cases))
    wrong = [p for p in predictions if not p.correct]
    detail = (
        f"{batch_size - len(wrong)}/{batch_size} labels right"
        + "".join(f"; expected {p.expected!r}, got {p.answer!r} (HTTP {p.status_code})" for p in wrong[:3])
    )
    return CheckResult(name="tutorial pairs", passed=not wrong, detail=detail, predictions=predictions)
