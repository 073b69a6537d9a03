"""The verifier forward: the uncached tail of each request's history plus its draft.

Prefill and decode are the same call: the input is every token the KV cache does not hold
yet (the whole prompt at first, then one token) followed by the k draft tokens, and only
the last k+1 positions' logits are computed. Requests in decode (one uncached token) share
one batched forward: their caches are stacked left-padded with a key mask, each row gets its
own positions, and the new KV is split back per request. A prefill runs alone, so a long
prompt never pads a batch of one-token rows.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import torch
from transformers import PreTrainedModel

from kv_cache_proposer.base import Draft

from ..cache.kv_cache import KVCache, stack_left_padded, unstack
from .request import Request


class Verifier:
    def __init__(self, model: PreTrainedModel, max_batch: int = 8):
        self.model = model
        self.device = model.device
        self.max_batch = max_batch
        self.forwards = 0  # model calls so far (a batched call counts once)
        params = inspect.signature(model.forward).parameters
        # transformers renamed `past_key_values` to `cache` during 5.x
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def new_cache(self) -> KVCache:
        return KVCache(self.model.config)

    @torch.inference_mode()
    def forward(self, cache: KVCache, tokens: Sequence[int], num_logits: int) -> torch.Tensor:
        """Feed `tokens` after the cached ones; return logits [num_logits, V] of the last positions."""
        self.forwards += 1
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)  # [1, T]
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=num_logits, **{self.cache_kwarg: cache.hf})
        return out.logits[0, -num_logits:]  # [k+1, V]

    def verify(self, batch: Sequence[Request], drafts: Sequence[Draft]) -> list[torch.Tensor]:
        """Per request, logits [k+1, V] at positions [last, d1..dk]."""
        inputs = []
        for req, draft in zip(batch, drafts):
            if req.cache is None:
                req.cache = self.new_cache()
            inputs.append(req.token_ids[req.cache.length :] + draft.tokens)
        out: list = [None] * len(batch)
        decode = [i for i, req in enumerate(batch) if req.cache.length and len(inputs[i]) == len(drafts[i].tokens) + 1]
        for start in range(0, len(decode) if len(decode) > 1 else 0, self.max_batch):
            rows = decode[start : start + self.max_batch]
            for i, logits in zip(rows, self.forward_batch([batch[i] for i in rows], [inputs[i] for i in rows])):
                out[i] = logits
        for i, req in enumerate(batch):
            if out[i] is None:
                out[i] = self.forward(req.cache, inputs[i], len(drafts[i].tokens) + 1)
        return out

    @torch.inference_mode()
    def forward_batch(self, reqs: Sequence[Request], inputs: Sequence[list[int]]) -> list[torch.Tensor]:
        """One forward for several decoding requests; every input position is a logit row, so
        request r gets logits [len(inputs[r]), V]. Each request's cache is replaced by its row."""
        self.forwards += 1
        old = [r.cache.length for r in reqs]
        new = [len(x) for x in inputs]
        T = max(new)
        cache, key_mask = stack_left_padded([r.cache for r in reqs])  # mask [B, Lmax]
        ids = torch.tensor([x + [0] * (T - len(x)) for x in inputs], device=self.device)  # [B, T], right-padded
        # right padding is never attended by real tokens (causal), and is dropped from the cache below
        mask = torch.cat([key_mask, torch.ones(len(reqs), T, dtype=torch.bool, device=self.device)], dim=1)
        pos = torch.tensor(old, device=self.device)[:, None] + torch.arange(T, device=self.device)[None, :]  # [B, T]
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        hidden = decoder(input_ids=ids, attention_mask=mask.long(), position_ids=pos, use_cache=True,
                         **{self.cache_kwarg: cache.hf}).last_hidden_state  # [B, T, H]
        for r, row in zip(reqs, unstack(cache, old, new)):
            r.cache = row
        logits = head(torch.cat([hidden[b, :n] for b, n in enumerate(new)]))  # [sum(new), V]: one lm_head GEMM
        return list(logits.split(new))
