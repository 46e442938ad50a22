"""check: correctness a nightly run can trust, each check named, with pass/fail and detail.

The tutorial's check was a person reading six printed labels. Here every answer is compared
with what it must be -- the golden label, and the original untraced model run in-process --
and the faults a server really has are provoked on purpose: partial batches, malformed
requests batched with good ones, over-long texts, a request without the token. The served model is
any engine's (tasks/engines/seam.py, the HTTP contract): the same checks, the same pass rules.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeGuard

import httpx
import numpy as np
from pydantic import BaseModel

from serving.contract import CLASS_NAMES, ModelInfo
from tasks.common.config import ChecksConfig, ModelConfig
from tasks.common.errors import PipelineError
from tasks.serve.clients import Endpoint, Inference, Prediction
from tasks.verify.accuracy import read_mrpc_lenient, scores
from tasks.verify.pairs import LONG_TEXT, NOT_PARAPHRASE, PARAPHRASE, SEQUENCE_0, SEQUENCE_2, load_golden
from tasks.verify.reference import Reference

# How late a partial batch may come back, beyond max_batch_delay, before we call it lost.
PARTIAL_BATCH_SLACK_S = 30.0


class Packaged(Protocol):
    """The model as served: the name it answers at, and its facts (a .mar, a Serve package, a Served)."""

    @property
    def model_name(self) -> str: ...

    @property
    def info(self) -> ModelInfo: ...


class Guarded(Endpoint, Protocol):
    """A served model's endpoint, its engine, and the status that engine refuses a request without the token with
    (None: token authentication off)."""

    @property
    def engine_name(self) -> str: ...

    @property
    def refused_with(self) -> int | None: ...


class CheckFailed(PipelineError):
    """A check gave a wrong answer; the flow fails after stop, with every artifact written."""


class CheckResult(BaseModel):
    name: str
    passed: bool
    detail: str
    metrics: dict = {}
    predictions: list[Prediction] = []
    engine: str | None = None  # the engine that served the answers


def _verdict(name: str, predictions: list[Prediction], what: str = "labels right") -> CheckResult:
    wrong = [p for p in predictions if not p.correct]
    detail = f"{len(predictions) - len(wrong)}/{len(predictions)} {what}" + "".join(
        f"; {p.seq_0[:40]!r}: expected {p.expected!r}, got {p.answer!r} (HTTP {p.status_code})" for p in wrong[:3]
    )
    return CheckResult(name=name, passed=not wrong, detail=detail, predictions=predictions)


def full_batch(inference: Inference, batch_size: int) -> CheckResult:
    """The tutorial's check: batch_size at once, the first half a paraphrase pair, the rest not."""
    half = batch_size // 2 or 1
    cases = [PARAPHRASE if i < half else NOT_PARAPHRASE for i in range(batch_size)]
    return _verdict("tutorial pairs (full batch)", inference.send_all(cases, "full batch", batch_size))


def partial_batch(inference: Inference, batch_size: int, max_batch_delay_ms: int) -> CheckResult:
    """Fewer than batch_size: TorchServe waits max_batch_delay, the handler pads and drops the padding."""
    count = max(1, batch_size - 1)
    cases = [PARAPHRASE if i % 2 == 0 else NOT_PARAPHRASE for i in range(count)]
    predictions = inference.send_all(cases, "partial batch", count)
    result = _verdict("partial batch", predictions)
    slowest = max(p.latency_ms for p in predictions)
    limit_ms = max_batch_delay_ms + PARTIAL_BATCH_SLACK_S * 1000
    result.detail += (
        f"; {count} of batch_size {batch_size}, slowest {slowest:.0f} ms (max_batch_delay {max_batch_delay_ms} ms)"
    )
    if slowest > limit_ms:
        result.passed = False
        result.detail += f"; slower than max_batch_delay + {PARTIAL_BATCH_SLACK_S:.0f} s: the batch is stuck"
    result.metrics = {"requests": count, "slowest_ms": round(slowest, 1)}
    return result


def golden_pairs(inference: Inference, golden: list[tuple[str, str, str]], workers: int) -> CheckResult:
    predictions = inference.send_all(golden, "golden", workers)
    result = _verdict("golden pairs", predictions)
    # A foreign handler sends no probability: its answers' text is all there is to judge.
    bad_scores = [
        p
        for p in predictions
        if p.status_code == 200 and not _finite(p.probability) and any(q.probability is not None for q in predictions)
    ]
    if bad_scores:
        result.passed = False
        result.detail += f"; {len(bad_scores)} answers without a finite score (NaN/Inf)"
    return result


def _finite(value: float | None) -> TypeGuard[float]:
    return value is not None and math.isfinite(value)


def parity(predictions: list[Prediction], reference: Reference, tolerance: float) -> CheckResult:
    """Served answers equal the original model's in-process: same labels, scores within tolerance."""
    expected = reference.predict([(p.seq_0, p.seq_1) for p in predictions])
    label_mismatch = sum(p.answer != label for p, (label, _) in zip(predictions, expected, strict=True))
    diffs = [
        abs(p.probability - prob) if _finite(p.probability) else math.inf
        for p, (_, prob) in zip(predictions, expected, strict=True)
    ]
    worst = max(diffs, default=0.0)
    passed = label_mismatch == 0 and worst <= tolerance
    detail = (
        f"{len(predictions) - label_mismatch}/{len(predictions)} labels equal in-process; "
        f"largest probability difference {worst:.2e} (tolerance {tolerance:g})"
    )
    return CheckResult(
        name="parity with in-process model",
        passed=passed,
        detail=detail,
        metrics={"label_mismatches": label_mismatch, "max_abs_diff": worst},
    )


def not_applicable(name: str, why: str) -> CheckResult:
    """A check this handler cannot be held to (a brought .mar's handler is not ours); said, not failed."""
    return CheckResult(name=name, passed=True, detail=f"not applicable: {why}", metrics={"applicable": False})


def malformed_requests() -> list[tuple[str, dict]]:
    """Requests a client gets wrong; each must get its own 4xx."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    return [
        ("missing seq_1", {"data": {"seq_0": SEQUENCE_0}}),
        ("empty text", {"data": {"seq_0": "   ", "seq_1": SEQUENCE_2}}),
        ("non-UTF-8 bytes", {"content": b"seq_0=%FF%FE%FD&seq_1=hello", "headers": form}),
        ("1 MB text", {"json": {"seq_0": "a" * 1_000_000, "seq_1": SEQUENCE_2}}),
        ("wrong JSON types", {"json": {"seq_0": 5, "seq_1": ["not", "a", "string"]}}),
    ]


def isolation(inference: Inference, batch_size: int) -> CheckResult:
    """Malformed requests sent together with good ones: 4xx for each bad one, right answers for the rest."""
    bad = [(kind, kind, "4xx", request) for kind, request in malformed_requests()]
    good = [PARAPHRASE if i % 2 == 0 else NOT_PARAPHRASE for i in range(max(batch_size, len(bad)))]
    with ThreadPoolExecutor(max_workers=len(bad) + len(good)) as pool:
        # Interleaved, so every batch TorchServe forms from them holds good and bad requests.
        bad_futures, good_futures = [], []
        for i, case in enumerate(good):
            if i < len(bad):
                kind, text, expected, request = bad[i]
                bad_futures.append(pool.submit(inference.send, kind, text, expected, "isolation", **request))
            good_futures.append(pool.submit(inference.send, *case, "isolation"))
        refused = [f.result() for f in bad_futures]
        answered = [f.result() for f in good_futures]
    not_4xx = [p for p in refused if not 400 <= p.status_code < 500]
    unclear = [p for p in refused if 400 <= p.status_code < 500 and len(p.answer) < 8]
    wrong = [p for p in answered if not p.correct]
    for p in refused:
        p.expected, p.answer = "4xx", f"{p.status_code}: {p.answer}"
    passed = not (not_4xx or unclear or wrong)
    detail = (
        f"{len(refused) - len(not_4xx)}/{len(refused)} malformed requests got a 4xx; "
        f"{len(answered) - len(wrong)}/{len(answered)} batch-mates answered right"
    )
    detail += "".join(f"; {p.seq_0}: HTTP {p.status_code}" for p in not_4xx)
    detail += "".join(f"; batch-mate got {p.answer!r} (HTTP {p.status_code})" for p in wrong[:2])
    return CheckResult(name="malformed requests isolated", passed=passed, detail=detail, predictions=refused + answered)


def truncation(inference: Inference, max_length: int) -> CheckResult:
    """Texts longer than max_length are truncated, not refused, and the answer says so."""
    p = inference.send(LONG_TEXT, LONG_TEXT, "paraphrase", check="truncation")
    passed = p.status_code == 200 and p.truncated is True and p.answer == p.expected
    detail = (
        f"a {len(LONG_TEXT.split())}-word pair: HTTP {p.status_code}, X-Truncated {p.truncated}, answer {p.answer!r}"
    )
    return CheckResult(
        name=f"texts over max_length {max_length} truncated", passed=passed, detail=detail, predictions=[p]
    )


TOKEN_CHECK = "requests without the token refused"


def token_refused(inference: Inference, refused_with: int | None) -> CheckResult:
    """A request without the token, and one with a wrong one, get the engine's refusal -- TorchServe 0.12's 400
    (InvalidKeyException), Ray Serve's 401 -- never an answer."""
    if refused_with is None:
        return not_applicable(TOKEN_CHECK, "token authorization is off (serving.token_auth)")
    pair = {"seq_0": PARAPHRASE[0], "seq_1": PARAPHRASE[1]}
    statuses: dict[str, int] = {}
    for what, headers in (("no token", {}), ("a wrong token", {"Authorization": "Bearer not-the-token"})):
        try:
            statuses[what] = httpx.post(inference.url, data=pair, headers=headers, timeout=30.0).status_code
        except httpx.HTTPError:
            statuses[what] = 0  # no answer is no refusal: it fails
    passed = all(status == refused_with for status in statuses.values())
    detail = "; ".join(f"{what}: HTTP {status}" for what, status in statuses.items())
    return CheckResult(
        name=TOKEN_CHECK,
        passed=passed,
        detail=f"{detail} (the engine refuses with {refused_with})",
        metrics={"statuses": statuses, "refused_with": refused_with},
    )


def accuracy_check(
    inference: Inference, reference: Reference, path: Path, min_accuracy: float | None, concurrency: int
) -> CheckResult:
    """A labelled file through the server: accuracy, F1, confusion matrix -- and every served label
    equal to the original model's in-process label (the same model, not just as good a one)."""
    pairs, truth, skipped = read_mrpc_lenient(path)
    names = list(inference.names.values())  # index 0 = not paraphrase, 1 = paraphrase
    cases = [(a, b, CLASS_NAMES[label]) for (a, b), label in zip(pairs, truth, strict=True)]
    served = inference.send_all(cases, "accuracy", concurrency)
    in_process = [label for label, _ in reference.predict(pairs)]
    failed = [p for p in served if p.status_code != 200]
    metrics = scores(truth, np.array([names.index(p.answer) if p.answer in names else -1 for p in served]))
    metrics["agreement_with_in_process"] = sum(p.answer == label for p, label in zip(served, in_process, strict=True))
    metrics["http_errors"] = len(failed)
    agree = metrics["agreement_with_in_process"] == len(pairs)
    good_enough = min_accuracy is None or metrics["accuracy"] >= min_accuracy
    detail = (
        f"{path.name}: accuracy {metrics['accuracy']:.4f}, F1 {metrics['f1']:.4f} on {len(pairs)} pairs; "
        f"{metrics['agreement_with_in_process']}/{len(pairs)} equal to in-process"
    )
    if not good_enough:
        detail += f"; below min_accuracy {min_accuracy}"
    if failed:
        detail += f"; {len(failed)} requests failed (first: HTTP {failed[0].status_code} {failed[0].answer!r})"
    if skipped:
        detail += f"; skipped malformed lines {skipped[:5]}"
        metrics["skipped_lines"] = skipped
    return CheckResult(
        name="accuracy", passed=agree and good_enough and not failed, detail=detail, metrics=metrics, predictions=served
    )


def run_checks(
    server: Guarded, archive: Packaged, model: ModelConfig, checks: ChecksConfig, max_batch_delay: int
) -> list[CheckResult]:
    """Every check, in order; none stops the others, so the summary shows all that failed.
    Batch size, max_length and the label names are the packaged model's own."""
    info = archive.info
    foreign = info.handler == "foreign"  # a brought .mar's handler: judged by its answers' text alone
    inference = Inference(server, archive.model_name, info.class_names)
    reference = (
        Reference(model, info.max_length) if not foreign and (checks.golden_pairs or checks.accuracy_file) else None
    )
    try:
        results = [full_batch(inference, info.batch_size), partial_batch(inference, info.batch_size, max_batch_delay)]
        if checks.golden_pairs is not None:
            golden = golden_pairs(inference, load_golden(checks.golden_pairs), info.batch_size)
            # A graph compiled with 16-bit casting is held to the looser tolerance; labels must still agree.
            tolerance = checks.parity_tolerance_for(info.backend, info.compiler_args)
            if reference is None:  # a foreign handler: no in-process model to hold it to
                results += [
                    golden,
                    not_applicable(
                        "parity with in-process model", "the handler sends no probability (X-Paraphrase-Probability)"
                    ),
                ]
            else:
                results += [golden, parity(golden.predictions, reference, tolerance)]
        if foreign:
            results += [
                not_applicable(
                    "malformed requests isolated",
                    "the handler is not ours; it makes no promise of a 4xx per malformed request",
                ),
                not_applicable(
                    f"texts over max_length {info.max_length} truncated",
                    "the handler is not ours and sends no X-Truncated",
                ),
            ]
        else:
            results += [isolation(inference, info.batch_size), truncation(inference, info.max_length)]
        results.append(token_refused(inference, server.refused_with))
        if checks.accuracy_file is not None and reference is not None:  # not foreign
            results.append(
                accuracy_check(inference, reference, checks.accuracy_file, checks.min_accuracy, checks.concurrency)
            )
    finally:
        inference.close()
    for result in results:
        result.engine = server.engine_name
    return results


def raise_if_failed(results: list[CheckResult]) -> None:
    """Fail the check stage, naming every failed check (the results themselves are kept for the summary)."""
    wrong = [c for c in results if not c.passed]
    if wrong:
        raise CheckFailed("; ".join(f"{c.name}: {c.detail}" for c in wrong))
