"""archive: traced model + handler + model_info + tokenizer files -> a .mar in the run's model store."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from tasks.config import REPO_ROOT
from tasks.trace import TracedModel

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
            extra_files: tuple[Path, ...] = ()) -> Archive:
    model_store.mkdir(parents=True, exist_ok=True)
    name = name or model_name(traced.max_length, traced.batch_size)
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
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    mar = model_store / f"{name}.mar"
    if done.returncode != 0 or not mar.is_file():
        raise ArchiveError(f"torch-model-archiver failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return Archive(model_name=name, mar_file=mar, model_store=model_store)
