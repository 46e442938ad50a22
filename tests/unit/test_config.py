import re

import pytest
import torch
import yaml

from tasks.common import backends
from tasks.common.config import REPO_ROOT, ConfigError, RunConfig, ServingConfig, load_config
from tasks.common.sizing import resolve_serving
from tests.nights import config_leaves


def test_a_minimal_own_config_runs_the_default_night_in_every_key_it_does_not_set(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("serving:\n  batch_size: 4\n  max_length: 64\n")
    night, default = (
        config_leaves(load_config(mine).model_dump(mode="json")),
        config_leaves(load_config().model_dump(mode="json")),
    )
    assert {key for key in default if night[key] != default[key]} == {"serving.batch_size", "serving.max_length"}
    # The night the README documents: the embedded model's calibrated threshold, the kind its checkpoint decides,
    # the length buckets, the capacity search at 1 s, 30 s of load by 64 clients.
    assert (night["model.source"], night["model.kind"], night["model.threshold"]) == ("embedded", "auto", 0.6821)
    assert night["serving.length_buckets"] == [40, 56, 80, 128] and night["serving.max_batch_delay"] == 5
    assert (night["benchmark.capacity.enabled"], night["benchmark.capacity.bound_ms"]) == (True, 1000)
    assert (night["benchmark.concurrency"], night["benchmark.duration"]) == (64, 30)


def test_a_relative_path_in_a_config_file_is_relative_to_that_file(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "pairs.yaml").write_text("- {label: paraphrase, seq_0: a, seq_1: b}\n")
    (folder / "night.yaml").write_text(
        "model:\n  source: ./checkpoint\n  threshold: 0.7\nchecks:\n  golden_pairs: pairs.yaml\nruns_dir: runs\n"
    )
    monkeypatch.chdir(tmp_path)  # elsewhere: the file's folder decides, not where the command runs
    config = load_config(folder / "night.yaml")
    assert config.model.source == str(folder / "checkpoint")
    assert (config.checks.golden_pairs, config.runs_dir) == (folder / "pairs.yaml", folder / "runs")


def test_the_flows_parameters_are_relative_to_the_checkout_wherever_it_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a worker's hook may run anywhere
    config = load_config("configs/gpu.yaml", {"checks.golden_pairs": "configs/golden_pairs.yaml"})
    assert config.serving.backend == "cuda"
    assert config.checks.golden_pairs == REPO_ROOT / "configs" / "golden_pairs.yaml"


@pytest.mark.parametrize(
    "text, says",
    [("serving: [batch_size\n", "not valid YAML"), ("- serving\n", "must hold a mapping of sections")],
)
def test_a_broken_config_file_is_an_error_never_the_defaults(tmp_path, text, says):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=says):
        load_config(path)
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["gpu.yaml", "inf2-xlarge.yaml"])
def test_a_shipped_config_holds_only_what_differs_from_the_defaults(name):
    given = config_leaves(yaml.safe_load((REPO_ROOT / "configs" / name).read_text()))
    default = config_leaves(RunConfig().model_dump(mode="json"))
    assert [key for key, value in given.items() if default[key] == value] == []


def test_dotted_overrides_apply_and_leave_the_rest():
    base = load_config()
    config = load_config(None, {"serving.batch_size": 4, "benchmark.enabled": False, "model.kind": None})
    assert config.serving.batch_size == 4
    assert config.benchmark.enabled is False
    # None means "not given": the file's value stays.
    assert config.model.kind == base.model.kind
    assert config.serving.max_length == base.serving.max_length


def test_unknown_key_is_refused_naming_it():
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"serving.batchsize": 4})
    message = str(caught.value)
    assert "serving.batchsize" in message
    assert "unknown field" in message


def test_unknown_key_in_yaml_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("benchmark:\n  concurency: 8\n")
    with pytest.raises(ConfigError, match=r"benchmark\.concurency: unknown field"):
        load_config(path)


def test_zero_batch_size_is_refused_naming_the_field():
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"serving.batch_size": 0})
    assert "serving.batch_size" in str(caught.value)
    assert "0" in str(caught.value)


def test_same_port_for_inference_and_management_is_refused():
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"serving.inference_port": 9000, "serving.management_port": 9000})
    message = str(caught.value)
    assert "serving" in message
    assert "must differ" in message


def test_same_ports_allowed_when_free_ports_is_set():
    config = load_config(
        None, {"serving.inference_port": 9000, "serving.management_port": 9000, "serving.free_ports": True}
    )
    assert config.serving.free_ports is True


def test_missing_config_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert str(missing) in str(caught.value)


def test_config_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


@pytest.mark.parametrize("workers", [0, -1])
def test_non_positive_worker_count_is_refused(workers):
    # initial_workers is sent to TorchServe and divides the cores in resolve_serving.
    with pytest.raises(ConfigError, match=r"serving\.initial_workers"):
        load_config(None, {"serving.initial_workers": workers})


@pytest.fixture
def cores(monkeypatch):
    """Pretend this host has the given physical and logical core counts."""
    counts = {}

    def cpu_count(logical=True):
        return counts["logical"] if logical else counts["physical"]

    def set_cores(physical, logical):
        counts.update(physical=physical, logical=logical)
        monkeypatch.setattr(backends.psutil, "cpu_count", cpu_count)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    return set_cores


def test_auto_workers_is_one_per_physical_core(cores):
    cores(physical=4, logical=8)
    resolved = resolve_serving(ServingConfig(initial_workers="auto"))
    assert resolved.initial_workers == 4
    assert resolved.threads_per_worker == 1
    assert resolved.cores == 4


def test_fixed_workers_split_the_cores_into_threads(cores):
    cores(physical=8, logical=16)
    resolved = resolve_serving(ServingConfig(initial_workers=2))
    assert resolved.initial_workers == 2
    assert resolved.threads_per_worker == 4


def test_more_workers_than_cores_is_refused_naming_the_count_and_its_source(cores):
    cores(physical=2, logical=4)
    with pytest.raises(ConfigError) as caught:
        resolve_serving(ServingConfig(initial_workers=6))
    message = str(caught.value)
    assert "serving.initial_workers = 6" in message and "2 physical CPU cores" in message
    assert "psutil" in message and "2 or fewer" in message


def test_unknown_physical_cores_falls_back_to_logical(cores):
    cores(physical=None, logical=3)
    resolved = resolve_serving(ServingConfig())
    assert resolved.initial_workers == 3
    assert resolved.threads_per_worker == 1


def test_buckets_end_at_max_length_and_ignore_longer_ones():
    assert ServingConfig(max_length=128, length_buckets=[64, 40, 256]).buckets() == [40, 64, 128]
    assert ServingConfig(max_length=32, length_buckets=[40, 56, 80, 128]).buckets() == [32]
    assert ServingConfig(max_length=128, length_buckets=None).buckets() == [128]
    assert ServingConfig(max_length=128).buckets() == [40, 56, 80, 128]  # the default's
    with pytest.raises(ValueError, match="length_buckets"):
        ServingConfig(length_buckets=[4])


@pytest.mark.parametrize("field", ["checks.accuracy_file", "benchmark.pairs_file"])
def test_a_missing_input_file_is_refused_before_anything_starts(field):
    full = re.escape(str(REPO_ROOT / "no-such.tsv"))  # a parameter's relative path: relative to the checkout
    with pytest.raises(ConfigError, match=rf"{field} = '{full}'.*does not exist"):
        load_config(None, {field: "no-such.tsv"})


def test_cuda_workers_share_the_gpus_as_the_cpu_cores_allow_and_more_are_refused_naming_both(cores, monkeypatch):
    """No GPU here: torch's view of one is faked, which is all resolve_serving reads."""
    cores(physical=8, logical=16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU")
    resolved = resolve_serving(ServingConfig(backend="cuda"))
    assert (resolved.cores, resolved.initial_workers, resolved.threads_per_worker) == (2, 8, 1)  # 4 per GPU
    assert resolve_serving(ServingConfig(backend="cuda", initial_workers=3)).initial_workers == 3
    with pytest.raises(ConfigError) as caught:
        resolve_serving(ServingConfig(backend="cuda", initial_workers=9))
    message = str(caught.value)
    assert "2 GPUs" in message and "8 physical CPU cores" in message and "8 or fewer" in message


def test_the_reference_engine_keeps_the_plain_names_whichever_serves_first():
    """TorchServe is what a night of several is read against, and where a crashed night's TorchServe is looked
    for (runs/*/server/): its files keep the plain names in either order; Ray alone keeps them too."""
    for order in (["torchserve", "ray"], ["ray", "torchserve"]):
        serving = load_config(None, {"serving.engines": order}).serving
        assert serving.reference_engine() == "torchserve"
        assert serving.engine_file("server", "torchserve") == "server"
        assert serving.engine_file("server", "ray") == "server-ray"
        assert serving.engine_file("benchmark.json", "ray") == "benchmark-ray.json"
    alone = load_config(None, {"serving.engine": "ray"}).serving
    assert alone.night_engines() == ["ray"] and alone.engine_file("server", "ray") == "server"
