"""Bring your own: a traced graph (--traced PATH.pt) instead of trace, or a .mar (--mar PATH.mar) instead of
trace and archive. Either way the run still starts, registers, checks, benchmarks and stops.

A graph brought must keep this pipeline's input contract (tasks/prepare/trace.py: the bi-encoder's four
token tensors, or the pair classifier's three, to [batch, 2] scores); a saved TorchScript graph keeps no
input shapes, so batch_size and max_length are the run's (serving.batch_size, --max-length).
A .mar is served as it is. One with our model_info.json inside is ours; any other handler is "foreign":
the checks then judge its answers' text alone (tasks/verify/checks.py).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from serving.contract import CLASS_NAMES, MODEL_INFO_FILE, ModelInfo
from tasks.common.config import ModelConfig
from tasks.common.errors import PipelineError
from tasks.prepare.archive import Archive
from tasks.prepare.trace import TracedModel, checkpoint, class_names, detect_kind


class BringError(PipelineError):
    """A brought graph or .mar the pipeline cannot serve."""


def from_traced(model: ModelConfig, batch_size: int, max_length: int, backend: str, out_dir: Path) -> TracedModel:
    """The model directory trace would have written, around a graph traced elsewhere (model.traced)."""
    if model.traced is None:
        raise BringError("no graph to bring: model.traced is not set", fix="give --traced PATH.pt")
    out_dir.mkdir(parents=True, exist_ok=True)
    source, local = checkpoint(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        config = AutoConfig.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as error:
        raise BringError(
            f"--traced {model.traced}: no tokenizer at model.source {model.source!r}: {error}",
            fix="give --model the tokenizer directory (or hub id) the graph was traced with",
        ) from None
    kind = model.kind if model.kind != "auto" else detect_kind(config)
    graph = f"model_{max_length}.pt"
    shutil.copy2(model.traced, out_dir / graph)
    tokenizer_files = [Path(p).name for p in tokenizer.save_pretrained(str(out_dir)) if Path(p).is_file()]
    info = ModelInfo(
        kind=kind,
        backend=backend,
        batch_size=batch_size,
        max_length=max_length,
        buckets=[max_length],
        model_files={max_length: graph},
        tokenizer_files=tokenizer_files,
        class_names=class_names(config, kind),
        threshold=model.threshold if kind == "bi-encoder" else None,
        source=f"{model.traced} (tokenizer: {model.source})",
        compiler_args=[],
    )
    info.write(out_dir)
    return TracedModel(model_dir=out_dir, info=info, cache={"cache": "off", "reason": "graph brought (--traced)"})


def from_mar(mar_file: Path, model_store: Path, batch_size: int, max_length: int, backend: str) -> Archive:
    """The .mar copied into the run's model store (the only place TorchServe may register from)."""
    try:
        with zipfile.ZipFile(mar_file) as archive:
            names = set(archive.namelist())
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json")) if "MAR-INF/MANIFEST.json" in names else {}
            ours = archive.read(MODEL_INFO_FILE) if MODEL_INFO_FILE in names else None
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise BringError(
            f"--mar {mar_file} is not a readable model archive: {error}",
            fix="give a .mar made by torch-model-archiver (--archive-format default or zip-store)",
        ) from None
    name = (manifest.get("model") or {}).get("modelName") or mar_file.stem
    model_store.mkdir(parents=True, exist_ok=True)
    shutil.copy2(mar_file, model_store / f"{name}.mar")
    if ours is not None:
        info = ModelInfo.model_validate_json(ours)
    else:
        info = ModelInfo(
            kind="sequence-classification",
            backend=backend,
            batch_size=batch_size,
            max_length=max_length,
            buckets=[max_length],
            model_files={},
            class_names=list(CLASS_NAMES),
            source=str(mar_file),
            handler="foreign",
        )
    return Archive(model_name=name, mar_file=model_store / f"{name}.mar", model_store=model_store, info=info)
