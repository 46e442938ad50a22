"""The original, untraced model run in this process: what every served answer must equal."""

from __future__ import annotations

import torch

from serving.contract import encode_pairs
from tasks.common.config import ModelConfig
from tasks.prepare.trace import load_checkpoint


class Reference:
    def __init__(self, model: ModelConfig, max_length: int):
        self.model, self.tokenizer, self.kind = load_checkpoint(model)
        self.class_names = self.model.class_names
        self.max_length = max_length

    def predict(self, pairs: list[tuple[str, str]], chunk: int = 32) -> list[tuple[str, float]]:
        """(label, paraphrase probability) per pair, computed as the handler computes them."""
        out: list[tuple[str, float]] = []
        with torch.inference_mode():
            for start in range(0, len(pairs), chunk):
                inputs, _ = encode_pairs(self.tokenizer, self.kind, pairs[start : start + chunk], self.max_length)
                probabilities = torch.softmax(self.model(*inputs).float(), dim=-1)
                out += [(self.class_names[int(p.argmax())], float(p[1])) for p in probabilities]
        return out
