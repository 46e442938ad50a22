"""archive: traced model + handler + model_info + tokenizer files -> a .mar in the run's model store."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel

from tasks.config import REPO_ROOT
from tasks.build.trace import TracedModel

HANDLER_FILE = REPO_ROOT / "serving" / "handler.py"


class ArchiveError(RuntimeError):
    pass


class Archive(BaseModel):
    model_name: str
    mar_file: Path
    model_store: Path


def model_name(max_length: int, batch_size: int) -> str:
    """The tutorial's name for the model: bert-max_length{L}-batch_size{B}."""
    return f"bert-max_length{max_length}-batch_size{batch_size}"


def archive(traced: TracedModel, model_store: Path, handler: Path = HANDLER_FILE, name: str | None = None,
            extra_files: tuple[Path, ...] = (), handler_config: dict | None = None) -> Archive:
    """The .mar; handler_config goes into its model-config.yaml (e.g. {"length_buckets": [128]})."""
    model_store.mkdir(parents=True, exist_ok=True)
    name = name or model_name(traced.max_length, traced.batch_size)
    config_args = []
    if handler_config:
        config_file = model_store / f"{name}.model-config.yaml"
        config_file.write_text(yaml.safe_dump({"handler": handler_config}))
        config_args = ["--config-file", str(config_file)]
    archiver = shutil.which("torch-model-archiver", path=str(Path(sys.executable).parent))
    if archiver is None:
        raise ArchiveError("torch-model-archiver is not installed in this environment\nfix: run ./setup.sh")
    command = [
        archiver,
        "--model-name", name,
        "--version", "1.0",
        "--serialized-file", str(traced.model_file),
        "--handler", str(handler),
        "--extra-files", ",".join(str(path) for path in [*traced.extra_files, *extra_files]),
        "--export-path", str(model_store),
        "--force",
        # Uncompressed: deflating several graphs of float weights gains little and costs seconds
        # both here and when TorchServe unpacks the archive at registration.
        "--archive-format", "zip-store",
        *config_args,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    mar = model_store / f"{name}.mar"
    if done.returncode != 0 or not mar.is_file():
        raise ArchiveError(f"torch-model-archiver failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return Archive(model_name=name, mar_file=mar, model_store=model_store)
