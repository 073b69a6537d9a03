"""One verifier forward per request: the uncached tail of its history plus its draft.

Prefill and decode are the same call: the input is every token the KV cache does not hold
yet (the whole prompt at first, then one token) followed by the k draft tokens, and only
the last k+1 positions' logits are computed.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import torch
from transformers import PreTrainedModel

from kv_cache_proposer.base import Draft

from ..cache.kv_cache import KVCache
from .request import Request


class Verifier:
    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.device = model.device
        params = inspect.signature(model.forward).parameters
        # transformers renamed `past_key_values` to `cache` during 5.x
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def new_cache(self) -> KVCache:
        return KVCache(self.model)

    @torch.inference_mode()
    def forward(self, cache: KVCache, tokens: Sequence[int], num_logits: int) -> torch.Tensor:
        """Feed `tokens` after the cached ones; return logits [num_logits, V] of the last positions."""
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)  # [1, T]
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=num_logits, **{self.cache_kwarg: cache.hf})
        return out.logits[0, -num_logits:]  # [k+1, V]

    def verify(self, batch: Sequence[Request], drafts: Sequence[Draft]) -> list[torch.Tensor]:
        """Per request, logits [k+1, V] at positions [last, d1..dk]."""
        out = []
        for req, draft in zip(batch, drafts):
            if req.cache is None:
                req.cache = self.new_cache()
            tail = req.token_ids[req.cache.length :]
            out.append(self.forward(req.cache, tail + draft.tokens, len(draft.tokens) + 1))
        return out
