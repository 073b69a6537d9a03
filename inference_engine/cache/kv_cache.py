"""One request's KV cache: a transformers DynamicCache plus the operations the engine needs.

Rollback is trimming: rejected draft positions are cropped off the end, nothing is copied
(mlx-lm's `trim(n)`, gpt-fast's pointer move).
"""
from __future__ import annotations

from transformers import DynamicCache, PreTrainedModel


class KVCache:
    def __init__(self, model: PreTrainedModel):
        self.hf = DynamicCache(config=model.config)

    @property
    def length(self) -> int:
        """Number of token positions whose keys/values are cached."""
        return self.hf.get_seq_length()

    def trim(self, n: int) -> int:
        """Forget the last `n` positions; returns how many were actually removed."""
        n = max(0, min(n, self.length))
        if n:
            self.hf.crop(-n)
        return n

    @property
    def nbytes(self) -> int:
        total = 0
        for layer in self.hf.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total
