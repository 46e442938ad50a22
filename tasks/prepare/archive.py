"""archive: the traced model + handler + contract + model_info + tokenizer files -> a .mar in the model store."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml
from pydantic import BaseModel

from serving.contract import ModelInfo
from tasks.common.config import REPO_ROOT
from tasks.common.errors import PipelineError
from tasks.common.tools import environment_tool
from tasks.prepare.trace import TracedModel

HANDLER_FILE = REPO_ROOT / "serving" / "handler.py"
# What the handler imports, shipped beside it as the package serving/.
SERVING_FILES = tuple(REPO_ROOT / "serving" / name for name in ("contract.py", "claims.py", "model.py"))


class ArchiveError(PipelineError):
    pass


class Archive(BaseModel):
    """A .mar and the facts of the model inside it, so a stage after archive never guesses its shape."""

    model_name: str
    mar_file: Path
    model_store: Path
    info: ModelInfo


def archive(
    traced: TracedModel,
    model_store: Path,
    name: str | None = None,
    handler: Path = HANDLER_FILE,
    length_buckets: list[int] | None = None,
    extra_files: tuple[Path, ...] = (),
) -> Archive:
    """The .mar. length_buckets narrows the graphs the handler loads (model-config.yaml), e.g. to
    [max_length] for the tutorial's single-length serving of the same graphs; only those graphs are packed (the
    others would be copies no worker loads). extra_files: more files beside the handler (a handler that builds on
    ours ships ours too)."""
    model_store.mkdir(parents=True, exist_ok=True)
    name = name or traced.info.model_name
    # TorchServe's own @timed profiling of preprocess / inference / postprocess (ts_handler_* metrics).
    handler_config: dict = {"profile": True}
    if length_buckets:
        handler_config["length_buckets"] = length_buckets
    config_file = model_store / f"{name}.model-config.yaml"
    config_file.write_text(yaml.safe_dump({"handler": handler_config}))
    archiver = environment_tool("torch-model-archiver")
    if archiver is None:
        raise ArchiveError("torch-model-archiver is not installed in this environment", fix="run ./setup.sh")
    with tempfile.TemporaryDirectory() as staging, tempfile.TemporaryDirectory() as archiver_temp:
        # The handler imports serving.contract, .claims and .model: ship them as serving/ (a directory given as an
        # extra file is copied by its contents, so the staging folder holds serving/).
        package = Path(staging) / "serving"
        package.mkdir()
        for source in SERVING_FILES:
            shutil.copy(source, package / source.name)
        (package / "__init__.py").touch()
        files = traced.info.files(traced.model_dir)
        if length_buckets:
            unused = {traced.model_dir / name for b, name in traced.info.model_files.items() if b not in length_buckets}
            files = [path for path in files if path not in unused]
        command = [
            archiver,
            "--model-name",
            name,
            "--version",
            "1.0",
            "--serialized-file",
            str(files[1]),  # the first graph; the others are extra files
            "--handler",
            str(handler),
            "--extra-files",
            ",".join(str(path) for path in [files[0], *files[2:], *extra_files, staging]),
            "--export-path",
            str(model_store),
            "--config-file",
            str(config_file),
            "--force",
            # Uncompressed: deflating several graphs of float weights gains little and costs seconds
            # both here and when TorchServe unpacks the archive at registration.
            "--archive-format",
            "zip-store",
        ]
        # The archiver gathers the files in $TMPDIR/<model name>, deleting whatever is there first: two runs
        # archiving the same model at once on one host (two workers of a pool, a smoke check beside a night)
        # broke each other's .mar. A temporary directory of its own for each call.
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, TMPDIR=archiver_temp))
    mar = model_store / f"{name}.mar"
    if done.returncode != 0 or not mar.is_file():
        raise ArchiveError(f"torch-model-archiver failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return Archive(model_name=name, mar_file=mar, model_store=model_store, info=traced.info)
