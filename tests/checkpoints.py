"""Tiny local checkpoints built from a config, for what a checkpoint is (no model can be downloaded here).

Random weights and the embedded model's tokenizer: what they compute is arbitrary, so a test compares what is
served with the same checkpoint run in-process, never with the tutorial's expected labels.
"""

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

from tasks.prepare.trace import embedded_model_dir


def tiny(directory: Path, head: bool = True, labels: dict[int, str] | None = None) -> Path:
    """A 2-layer BERT saved with its tokenizer: with a sequence-classification head of len(labels) (default 2,
    unnamed) labels, or a plain encoder (BertModel, as the embedded model is) without one."""
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()), local_files_only=True)
    labels = labels or {0: "LABEL_0", 1: "LABEL_1"}
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(labels),
        id2label=labels,
        label2id={name: index for index, name in labels.items()},
        architectures=["BertForSequenceClassification" if head else "BertModel"],
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config) if head else BertModel(config)
    model.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
