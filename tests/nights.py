"""A night's benchmark result and a run's summary made to order, for the tests of what reads them (figures,
regression, trend, the summary and its artifacts)."""

from pathlib import Path

from tasks.common.config import RunConfig
from tasks.common.sizing import ResolvedServing
from tasks.measure.loadgen import percentiles
from tasks.measure.results import BenchmarkResult
from tasks.report.run_summary import RunSummary, summarize


def night(served: float, latency_s: float, **more) -> BenchmarkResult:
    """A benchmark whose every request took latency_s, at `served` inferences/s."""
    return BenchmarkResult(
        requests_per_s=served,
        inferences_per_s=served,
        latency_ms=percentiles([latency_s] * 10),
        requests=10,
        errors=0,
        concurrency=4,
        seconds=10 / served,
        **more,
    )


def summary(stages, checks=(), bench: BenchmarkResult | None = None, config=None, **facts) -> RunSummary:
    """A run's summary made to order (tasks/report/run_summary.py summarize): `stages` anything with as_list()
    (flows/stages.py Stages), the default config unless one is given, a 2-worker CPU host."""
    resolved = ResolvedServing(
        backend="cpu", device_name="cpu", cores=2, cores_source="test", initial_workers=2, threads_per_worker=1
    )
    return summarize(stages, list(checks), bench, config or RunConfig(), resolved, **{"run_dir": Path("x"), **facts})


class StagesAs:
    """Stage records as summary.json lists them, for summarize: [{"name", "status", "seconds"}, ...]."""

    def __init__(self, records: list[dict]):
        self.records = records

    def as_list(self) -> list[dict]:
        return self.records


def config_leaves(tree: dict, prefix: str = "") -> dict:
    """{dotted key: value} of a config as summary.json records it (a dict field such as regression_tolerances is
    one value), so two nights' configs are compared key by key."""
    found = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "regression_tolerances":
            found.update(config_leaves(value, f"{prefix}{key}."))
        else:
            found[prefix + key] = value
    return found
