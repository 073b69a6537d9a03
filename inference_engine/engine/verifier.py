"""The verifier forward: the uncached tail of each request's history plus its draft.

Prefill and decode are the same call: the input is every token the KV cache does not hold
yet (the whole prompt at first, then one token) followed by the k draft tokens, and only
the last k+1 positions' logits are computed. Requests in decode (one uncached token) share
one batched forward; a prefill runs alone, so a long prompt never pads a batch of one-token rows.

Two paths compute the same thing: the fast path (models/fast.py: fused projections, KV written
in place) for Llama-family models, and the transformers model itself, the eager reference
and the fallback for every other architecture.
"""
from __future__ import annotations

import inspect
import logging
from typing import Optional, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from kv_cache_proposer.base import Draft

from ..cache.kv_cache import KVCache, KVWindow, stack_left_padded, to_dynamic
from ..models.fast import FastDecoder, unsupported_reason
from .request import Request

log = logging.getLogger(__name__)

PREFILL_CHUNK = 512  # tokens per forward of a windowed prefill


class Verifier:
    def __init__(self, model: PreTrainedModel, max_batch: int = 8, fast: bool = True, compile: bool = False,
                 graphs: Optional[bool] = None):
        self.model = model
        self.device = model.device
        self.max_batch = max_batch
        self.forwards = 0  # model calls so far (a batched call counts once)
        self.decoder, self.head = model.get_decoder(), model.get_output_embeddings()
        reason = unsupported_reason(model) if fast else "eager path requested"
        if fast and reason is not None:
            log.info("fast decode path unavailable (%s); using the transformers forward", reason)
        self.fast: Optional[FastDecoder] = FastDecoder(model, compile, graphs) if reason is None else None
        record = getattr(model, "verify_copy", None)
        if self.fast is None and record is not None and record.sets is None:
            # the eager path never uses the bfloat16 copy and no fast path has built it: free it
            log.info("verify weights: same on the eager path; the bfloat16 copy is freed")
            record.release()
        params = inspect.signature(model.forward).parameters
        # transformers renamed `past_key_values` to `cache` during 5.x
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"

    @property
    def verify_weights(self) -> str:
        """The weights of wide forwards (verify, prefill): "bf16" for the bfloat16 copy, "same" for
        the step weights (docs/verify_weights.md). The eager path always computes with the latter."""
        return "same" if self.fast is None or self.fast.verify_from is None else "bf16"

    @property
    def verify_weights_from(self) -> Optional[int]:
        """Tokens per row from which a forward uses the bfloat16 copy; None under "same"."""
        return None if self.fast is None else self.fast.verify_from

    @property
    def verify_weights_bytes(self) -> int:
        """Memory the bfloat16 copy holds beyond the model's own weights (0 under "same")."""
        copy = getattr(self.model, "verify_copy", None)
        return 0 if copy is None or self.verify_weights == "same" else copy.nbytes

    @property
    def path(self) -> str:
        """eager | native (the whole step in one C++ call, csrc/native.cpp) | fast | compiling (the
        fast path serves while its one-token step compiles) | compiled | graphs (one-token steps
        replay CUDA graphs) | fast (compiling or capturing failed or was refused)."""
        if self.fast is None:
            return "eager"
        if self.fast.native is not None:
            return "native"
        if self.fast.graphs is not None:
            return self.fast.graphs.state if self.fast.graphs.state == "graphs" else "fast"
        step = self.fast.step
        return "fast" if step is None or step.state == "failed" else step.state

    def new_cache(self, window: Optional[KVWindow] = None, headroom: int = 1) -> KVCache:
        return KVCache(self.model.config, window=window, headroom=headroom)

    def forward(self, cache: KVCache, tokens: Sequence[int], num_logits: int) -> torch.Tensor:
        """Feed `tokens` after the cached ones; return logits [num_logits, V] of the last positions."""
        return self.forward_batch([cache], [list(tokens)], [num_logits])[0]

    def verify(self, batch: Sequence[Request], drafts: Sequence[Draft]) -> list[torch.Tensor]:
        """Per request, logits [k+1, V] at positions [last, d1..dk] (a prefill scoring its prompt:
        [L+k, V], every position)."""
        inputs = []
        for req, draft in zip(batch, drafts):
            if req.cache is None:
                req.cache = self.new_cache(req.kv_window, req.headroom)
            inputs.append(self._prefill_window(req, req.token_ids[req.cache.length :] + draft.tokens, len(draft.tokens) + 1))
        out: list = [None] * len(batch)
        # a request scoring its prompt keeps every row of its (uncached, see core) prefill
        keep = [len(x) if req.sampling.prompt_logprobs is not None and req.cache.length == 0 else len(d.tokens) + 1
                for req, x, d in zip(batch, inputs, drafts)]
        decode = [i for i, req in enumerate(batch) if req.cache.length and len(inputs[i]) == len(drafts[i].tokens) + 1]
        for start in range(0, len(decode) if len(decode) > 1 else 0, self.max_batch):
            rows = decode[start : start + self.max_batch]
            # every input position of a decoding row is a logit row
            logits = self.forward_batch([batch[i].cache for i in rows], [inputs[i] for i in rows], [len(inputs[i]) for i in rows])
            for i, lg in zip(rows, logits):
                out[i] = lg
        for i, req in enumerate(batch):
            if out[i] is None:
                out[i] = self.forward(req.cache, inputs[i], keep[i])
        return out

    def _prefill_window(self, req: Request, tokens: list[int], tail: int) -> list[int]:
        """A windowed cache takes a long input in pieces of PREFILL_CHUNK, so the mask and the ring
        stay SINK + WINDOW + PREFILL_CHUNK wide; returns what is left for this step's forward."""
        if req.cache.window is None or req.sampling.prompt_logprobs is not None:  # scoring needs every row at once
            return tokens
        while len(tokens) > PREFILL_CHUNK + tail:
            self.forward(req.cache, tokens[:PREFILL_CHUNK], 1)
            tokens = tokens[PREFILL_CHUNK:]
        return tokens

    @torch.inference_mode()
    def forward_batch(self, caches: Sequence[KVCache], inputs: Sequence[list[int]], keep: Sequence[int]) -> list[torch.Tensor]:
        """One forward: row r feeds inputs[r] after caches[r] and gets logits [keep[r], V] of its
        last positions. Each cache ends up holding its row's new positions."""
        self.forwards += 1
        starts, new = [c.length for c in caches], [len(x) for x in inputs]
        T = max(new)
        ids = torch.tensor([x + [0] * (T - len(x)) for x in inputs], device=self.device)  # [B, T], right-padded
        head = self.head
        if self.fast is not None:
            # a wide forward (verify, prefill) may run on the bfloat16 copy, lm_head included
            wide = self.fast.wide(T)
            head = self.fast.verify_head if wide else head
            hidden = self.fast.forward(ids, caches, starts, wide)  # [B, T, H]
            for cache, start, n in zip(caches, starts, new):
                cache.length = start + n  # right padding written past the end is simply not valid
        else:
            hidden = self._eager(ids, caches, starts, new)
        rows = torch.cat([hidden[b, n - k : n] for b, (n, k) in enumerate(zip(new, keep))])  # [sum(keep), H]
        return list(head(rows).split(list(keep)))  # one lm_head GEMM

    def _eager(self, ids: torch.Tensor, caches: Sequence[KVCache], starts: list[int], new: list[int]) -> torch.Tensor:
        """The transformers decoder over the same caches: rows left-padded with a key mask, each
        with its own positions; right padding is never attended by real tokens (causal)."""
        B, T = ids.shape
        if any(c.window is not None for c in caches):  # row by row, each under its own window mask
            hidden = ids.new_zeros((B, T, self.model.config.hidden_size), dtype=self.model.dtype)
            for b, (cache, start, n) in enumerate(zip(caches, starts, new)):
                row = ids[b : b + 1, :n]
                out = self._eager(row, [cache], [start], [n]) if cache.window is None else self._eager_window(row, cache, start)
                hidden[b, :n] = out[0]
            return hidden
        extra = {}
        if B == 1:
            layers = caches[0].layers()
        else:
            layers, key_mask = stack_left_padded(caches)  # mask [B, Lmax]
            ones = torch.ones(B, T, dtype=torch.bool, device=self.device)
            extra["attention_mask"] = torch.cat([key_mask, ones], dim=1).long()
            extra["position_ids"] = torch.tensor(starts, device=self.device)[:, None] + torch.arange(T, device=self.device)
        dc = to_dynamic(self.model.config, layers)
        L = dc.get_seq_length()
        hidden = self.decoder(input_ids=ids, use_cache=True, **extra, **{self.cache_kwarg: dc}).last_hidden_state
        for b, (cache, n) in enumerate(zip(caches, new)):
            cache.append([(layer.keys[b : b + 1, :, L : L + n], layer.values[b : b + 1, :, L : L + n]) for layer in dc.layers])
        return hidden  # [B, T, H]

    def _eager_window(self, ids: torch.Tensor, cache: KVCache, start: int) -> torch.Tensor:
        """One row over a windowed cache: the buffer's slots, then the new keys (transformers
        appends them), under a 4-D additive mask built from each slot's position; the new keys
        are then written into their ring slots. ids [1, T] → hidden [1, T, H]."""
        T, w, device = ids.shape[1], cache.window, ids.device
        queries = start + torch.arange(T, device=device)[:, None]  # [T, 1]
        # slots past the cached length hold rolled-back drafts: the new keys (appended) replace them
        held = (w.visible(cache.pos[None, :], queries) & (cache.pos < start) if cache.keys
                else queries.new_zeros((T, 0), dtype=torch.bool))
        allowed = torch.cat([held, w.visible(queries.T, queries)], dim=1)  # [T, capacity + T]
        mask = torch.zeros(allowed.shape, dtype=self.model.dtype, device=device)
        mask = mask.masked_fill(~allowed, torch.finfo(mask.dtype).min)[None, None]  # [1, 1, T, capacity + T]
        L = cache.capacity
        dc = to_dynamic(self.model.config, list(zip(cache.keys, cache.values))) if cache.keys else DynamicCache(config=self.model.config)
        hidden = self.decoder(input_ids=ids, position_ids=queries.T, attention_mask=mask, use_cache=True,
                              **{self.cache_kwarg: dc}).last_hidden_state
        new = [(layer.keys[:, :, L:], layer.values[:, :, L:]) for layer in dc.layers]  # [1, Hkv, T, D] each
        cache.reserve(start + T, new[0][0])
        slots = cache.place(start, T, device)
        for keys, values, (k, v) in zip(cache.keys, cache.values, new):
            keys.index_copy_(2, slots, k)
            values.index_copy_(2, slots, v)
        cache.length = start + T
        return hidden
