"""The contract between the pipeline and the TorchServe worker: the traced model's facts, and how pairs
become the traced graph's inputs.

Light on purpose: pydantic only at import (torch inside the functions that build tensors), never
TorchServe. The pipeline's stages import it without paying for torch or ts, and it ships inside the
.mar (serving/contract.py beside the handler), so the worker reads model_info.json and tokenizes
exactly as the stages that check it do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

MODEL_INFO_FILE = "model_info.json"
# Set by the pipeline in TorchServe's environment; read by the handler in each worker.
THREADS_ENV = "BERT_THREADS_PER_WORKER"
BACKEND_ENV = "BERT_BACKEND"  # the backend this server was started for
# Neuron: how many NeuronCores the workers share, and the directory where each worker claims one
# (a file per core holding the worker's pid; a dead pid's core is free again; serving/claims.py). On cuda
# each worker records there the GPU it was given (claims.record_gpu).
NEURON_CORES_ENV = "BERT_NEURON_CORES"
CORE_CLAIMS_ENV = "BERT_NEURON_CORE_CLAIMS"
FIELDS = ("seq_0", "seq_1")  # the tutorial's form fields
# Index 1 is the paraphrase class, as in MRPC (1 = equivalent) and the tutorial's model.
CLASS_NAMES = ("not paraphrase", "paraphrase")


class ModelInfo(BaseModel):
    """The traced model's facts: written once by trace to model_info.json, read by every stage after it
    and by the handler. Nobody re-derives batch_size, max_length or the buckets from the run's config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["bi-encoder", "sequence-classification"]
    backend: Literal["neuron", "cuda", "cpu"]
    batch_size: int
    max_length: int
    buckets: list[int]  # ascending, max_length last: one graph each
    model_files: dict[int, str]  # bucket -> graph file name, in the model directory
    tokenizer_files: list[str] = []  # file names, in the model directory
    class_names: list[str]  # index 0 = not paraphrase, 1 = paraphrase, in the model's own words
    threshold: float | None = None  # bi-encoder: the cosine at or above which a pair is a paraphrase
    compiler_args: list[str] = []  # what the graphs were compiled with (neuron); [] = the compiler's defaults
    source: str
    parity_max_abs_diff: float | None = None  # None: not measured (a graph or .mar brought, not traced here)
    versions: dict[str, str] = {}
    # "ours": serving/handler.py (headers X-Paraphrase-Probability, X-Truncated); "foreign": a brought .mar
    # whose handler only answers the label text, checked by its answers alone.
    handler: Literal["ours", "foreign"] = "ours"

    @property
    def model_name(self) -> str:
        """The tutorial's name for the registered model: bert-max_length{L}-batch_size{B}."""
        return f"bert-max_length{self.max_length}-batch_size{self.batch_size}"

    @classmethod
    def read(cls, model_dir: Path) -> ModelInfo:
        return cls.model_validate_json((Path(model_dir) / MODEL_INFO_FILE).read_text())

    def files(self, model_dir: Path) -> list[Path]:
        """Every file the worker needs, this one included: what archive packs into the .mar."""
        names = [MODEL_INFO_FILE, *self.model_files.values(), *self.tokenizer_files]
        return [Path(model_dir) / name for name in names]

    def write(self, model_dir: Path) -> Path:
        path = Path(model_dir) / MODEL_INFO_FILE
        path.write_text(self.model_dump_json(indent=2))
        return path


@dataclass
class Batch:
    """One TorchServe batch on its way through the handler: preprocess fills it, inference adds the
    scores, postprocess turns it into one answer per request. (It lives here because TorchServe loads a
    handler module only if that module defines exactly one class.)"""

    size: int  # requests TorchServe sent
    errors: dict[int, str] = field(default_factory=dict)  # request index -> why it was refused (400)
    indices: list[int] = field(default_factory=list)  # the requests the model runs, in row order
    inputs: tuple = ()  # the graph's input tensors, padded to batch_size; () when every request was refused
    truncated: list[bool] = field(default_factory=list)  # per row in indices: cut to max_length
    scores: torch.Tensor | None = None  # [batch_size, 2], padding rows included; set by inference


def bucket_for(longest: int, buckets: list[int]) -> int:
    """The smallest traced length that holds `longest` tokens (the last bucket truncates)."""
    return min((b for b in buckets if b >= longest), default=max(buckets))


def encode_pairs(tokenizer, kind: str, pairs: list[tuple[str, str]], max_length: int, buckets=None):
    """Tokenize pairs into the traced module's inputs, padded to the smallest bucket that holds them.

    sequence-classification: one pair encoding [CLS] a [SEP] b [SEP] -> (ids, mask, token types).
    bi-encoder: each sentence on its own -> (ids_0, mask_0, ids_1, mask_1).
    Texts longer than max_length are truncated to it. buckets: the traced lengths (default
    max_length only). Returns the tensors and, per pair, whether anything was truncated.

    One tokenizer pass per batch: the unpadded encoding gives the lengths that pick the bucket and
    is then padded here. Only the rare rows longer than the bucket are tokenized again, with the
    tokenizer's own truncation (a long pair is cut longest-first), so the tensors are exactly the
    tokenizer's padding="max_length", truncation=True encoding at the bucket length.
    """
    if tokenizer.padding_side != "right":  # BERT tokenizers pad on the right; the graphs were traced so
        raise ValueError(f"tokenizer pads on the {tokenizer.padding_side}; encode_pairs pads on the right")
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    if kind == "sequence-classification":
        enc = tokenizer(firsts, seconds, truncation=False, return_attention_mask=False)
        ids, types = list(enc["input_ids"]), list(enc["token_type_ids"])
        full = [len(row) for row in ids]
        length = bucket_for(min(max(full), max_length), buckets or [max_length])
        for i in [i for i, n in enumerate(full) if n > length]:
            cut = tokenizer(firsts[i], seconds[i], truncation=True, max_length=length, return_attention_mask=False)
            ids[i], types[i] = cut["input_ids"], cut["token_type_ids"]
        input_ids, mask = _padded(ids, length, tokenizer.pad_token_id)
        token_types, _ = _padded(types, length, tokenizer.pad_token_type_id)
        inputs = (input_ids, mask, token_types)
    else:
        # Both sides in one call: rows [0, count) are the seq_0s, rows [count, 2 * count) the seq_1s.
        texts, count = firsts + seconds, len(pairs)
        only_ids = dict(return_attention_mask=False, return_token_type_ids=False)
        ids = list(tokenizer(texts, truncation=False, **only_ids)["input_ids"])
        full = [max(len(a), len(b)) for a, b in zip(ids[:count], ids[count:], strict=True)]
        length = bucket_for(min(max(full), max_length), buckets or [max_length])
        for i in [i for i, row in enumerate(ids) if len(row) > length]:
            ids[i] = tokenizer(texts[i], truncation=True, max_length=length, **only_ids)["input_ids"]
        inputs = (
            *_padded(ids[:count], length, tokenizer.pad_token_id),
            *_padded(ids[count:], length, tokenizer.pad_token_id),
        )
    return inputs, [n > max_length for n in full]


def _padded(rows: list[list[int]], length: int, value: int) -> tuple:
    """Rows right-padded with `value` to `length`, and their attention mask (1 = token, 0 = padding)."""
    import torch

    tensor = torch.tensor([list(row) + [value] * (length - len(row)) for row in rows], dtype=torch.long)
    sizes = torch.tensor([len(row) for row in rows])
    return tensor, (torch.arange(length) < sizes[:, None]).long()


def pad_to_batch(inputs: tuple, batch_size: int) -> tuple:
    """Fill a partial batch up to the traced batch_size by repeating the first row.

    A traced graph has a static batch dimension. Repeating a real row (rather than all-padding
    rows) keeps mean pooling away from a zero mask. The padding's results are dropped later.
    """
    import torch

    rows = inputs[0].shape[0]
    if rows == batch_size:
        return inputs
    if rows > batch_size:
        raise ValueError(f"{rows} requests in one batch but the model was traced for {batch_size}")
    return tuple(torch.cat([t, t[:1].expand(batch_size - rows, *t.shape[1:])]) for t in inputs)
