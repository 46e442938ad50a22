"""A night of several engines, read back: each engine's own night out of it (its artifacts and trend are of that),
and the side by side -- the labels every engine gave the checked pairs, and a figure an engine lacks left absent."""

from tasks.report.side_by_side import EngineColumn, LabelsCompared, SideBySide, labels_compared, markdown_lines
from tasks.serve.clients import Prediction
from tasks.verify.checks import CheckResult
from tests.nights import StagesAs, night, summary


def _check(engine: str, answers: dict[tuple[str, str], str], name: str = "golden pairs") -> CheckResult:
    predictions = [
        Prediction(seq_0=a, seq_1=b, expected="paraphrase", answer=answer, status_code=200, latency_ms=1.0)
        for (a, b), answer in answers.items()
    ]
    predictions.append(  # refused on purpose (the isolation check's kind): no label to compare
        Prediction(seq_0="bad", seq_1="", expected="4xx", answer="400: empty", status_code=400, latency_ms=1.0)
    )
    return CheckResult(name=name, passed=True, detail="", predictions=predictions, engine=engine)


def test_the_labels_of_every_pair_all_engines_answered_are_compared_pair_by_pair():
    same = {("a", "b"): "paraphrase", ("c", "d"): "not paraphrase"}
    differs = {**same, ("c", "d"): "paraphrase", ("e", "f"): "paraphrase"}  # ("e", "f"): only one engine sent it
    compared = labels_compared([[_check("torchserve", same)], [_check("ray", differs)]], ["torchserve", "ray"])
    assert (compared.pairs, compared.equal) == (2, 1)
    assert compared.differences == ["golden pairs: 'c' / 'd': torchserve 'not paraphrase', ray 'paraphrase'"]
    agreed = labels_compared([[_check("torchserve", same)], [_check("ray", same)]], ["torchserve", "ray"])
    assert (agreed.pairs, agreed.equal, agreed.differences) == (2, 2, [])


def _side(ray_bench=None) -> SideBySide:
    return SideBySide(
        engines=[
            EngineColumn(
                engine="torchserve", status="ok", checks_passed=7, checks=7, start_s=2.0, benchmark=night(60.0, 0.2)
            ),
            EngineColumn(engine="ray", status="failed", checks_passed=6, checks=7, start_s=7.5, benchmark=ray_bench),
        ],
        labels=LabelsCompared(pairs=22, equal=22),
    )


def test_the_side_by_side_shows_each_engines_figures_and_leaves_out_what_one_lacks():
    text = "\n".join(markdown_lines(_side()))
    assert "Labels on the 22 checked pairs every engine answered: equal" in text
    assert "| figure | torchserve | ray |" in text
    assert "| inferences/s | 60.0 | - |" in text  # Ray's benchmark did not run: absent, not 0
    assert "| checks passed | 7/7 | 6/7 |" in text and "| status | ok | failed |" in text


def test_each_engine_of_the_night_is_read_back_as_its_own_night():
    stages = [{"name": "trace", "status": "ok", "seconds": 1.0}]
    stages += [{"name": "start", "status": "ok", "seconds": 1.0, "engine": "torchserve"}]
    stages += [{"name": "start", "status": "failed", "seconds": 1.0, "engine": "ray", "error": "port taken"}]
    checks = [CheckResult(name="golden pairs", passed=True, detail="16/16", engine="torchserve")]
    whole = summary(StagesAs(stages), checks, night(60.0, 0.2), side_by_side=_side(night(50.0, 0.3)))
    assert whole.status == "failed" and whole.engine == "torchserve"
    torchserve, ray = whole.for_engine("torchserve"), whole.for_engine("ray")
    assert torchserve.status == "ok" and [s.engine for s in torchserve.stages] == [None, "torchserve"]
    assert torchserve.benchmark.inferences_per_s == 60.0 and torchserve.side_by_side is None
    assert ray.status == "failed" and ray.engine == "ray" and ray.checks == []
    assert ray.benchmark.inferences_per_s == 50.0 and [s.name for s in ray.failed_stages()] == ["start"]
