"""A smaller causal LM sharing the verifier's tokenizer drafts k tokens autoregressively.

Each request gets its own trimmable KV cache. Rather than trusting rewind counts, every
propose() crops the cache to the longest prefix it shares with the request's history, so
the cache can never drift from what the verifier accepted. Drafts carry the draft model's
probabilities, which exact rejection sampling needs; greedy requests draft by argmax.
"""
from __future__ import annotations

import inspect
from typing import Optional, Protocol, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from .base import EMPTY, Draft, RequestView


class VocabularyMismatch(ValueError):
    pass


def check_vocab(draft_tokenizer, target_tokenizer, draft_model: PreTrainedModel, target_model: PreTrainedModel) -> None:
    """Draft and verifier must agree on every token id, or drafts would be meaningless."""
    dv, tv = draft_tokenizer.get_vocab(), target_tokenizer.get_vocab()
    if dv != tv:
        differ = sum(1 for t, i in tv.items() if dv.get(t) != i)
        raise VocabularyMismatch(
            f"draft model tokenizer does not match the verifier's: {len(dv)} vs {len(tv)} tokens, "
            f"{differ} verifier tokens missing or with different ids; use a draft model from the same family"
        )
    dn = draft_model.get_output_embeddings().out_features  # also for quantized heads, which hold no .weight
    tn = target_model.get_output_embeddings().out_features
    if dn != tn:
        raise VocabularyMismatch(f"draft model has {dn} output logits, the verifier {tn}; they must be equal")


class Runner(Protocol):
    """How the draft model is run: the engine passes its own forward (fast path, position-indexed
    KV); without one the transformers model runs on a DynamicCache."""

    def new_cache(self): ...  # anything with trim(n)

    def forward(self, cache, tokens: Sequence[int], num_logits: int) -> torch.Tensor: ...  # [num_logits, V]


class _TransformersRunner:
    def __init__(self, model: PreTrainedModel):
        self.model = model
        params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def new_cache(self) -> "_Dynamic":
        return _Dynamic(config=self.model.config)

    @torch.inference_mode()
    def forward(self, cache: DynamicCache, tokens: Sequence[int], num_logits: int) -> torch.Tensor:
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.model.device)  # [1, T]
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=num_logits, **{self.cache_kwarg: cache})
        return out.logits[0]  # [num_logits, V]


class _Dynamic(DynamicCache):
    def trim(self, n: int) -> None:
        if n > 0:
            self.crop(-n)


class _State:
    __slots__ = ("cache", "tokens")

    def __init__(self, runner: Runner):
        self.cache = runner.new_cache()
        self.tokens: list[int] = []  # the tokens whose KV is in self.cache


class DraftModelProposer:
    name = "draft"

    def __init__(self, model: PreTrainedModel, runner: Optional[Runner] = None):
        self.model = model
        self.runner = runner or _TransformersRunner(model)
        self._states: dict[str, _State] = {}

    def _forward(self, state: _State, tokens: Sequence[int]) -> torch.Tensor:
        logits = self.runner.forward(state.cache, tokens, 1)
        state.tokens.extend(tokens)
        return logits[-1].float()  # [V]

    def _sync(self, state: _State, history: Sequence[int]) -> list[int]:
        """Crop the cache to the prefix shared with history; return the uncached tail."""
        n = 0
        limit = min(len(state.tokens), len(history) - 1)  # keep at least one token to feed
        while n < limit and state.tokens[n] == history[n]:
            n += 1
        if n < len(state.tokens):
            state.cache.trim(len(state.tokens) - n)
            del state.tokens[n:]
        return list(history[n:])

    def propose(self, requests: Sequence[RequestView], num_tokens: Sequence[int]) -> list[Draft]:
        return [self._propose_one(r, k) for r, k in zip(requests, num_tokens)]

    def _propose_one(self, req: RequestView, k: int) -> Draft:
        if k <= 0:
            return EMPTY
        state = self._states.get(req.request_id) or self._states.setdefault(req.request_id, _State(self.runner))
        sampling = getattr(req, "sampling", None)
        temperature = getattr(sampling, "temperature", 0.0) or 0.0
        generator: Optional[torch.Generator] = getattr(req, "generator", None)
        logits = self._forward(state, self._sync(state, req.token_ids))
        tokens, probs = [], []
        for i in range(k):
            if temperature > 0:
                p = (logits / temperature).softmax(-1)  # [V]
                tok = int(torch.multinomial(p, 1, generator=generator))
                probs.append(p)
            else:
                tok = int(logits.argmax())
            tokens.append(tok)
            if i + 1 < k:
                logits = self._forward(state, [tok])
        return Draft(tokens, torch.stack(probs) if probs else None)

    def rewind(self, request_id: str, n: int) -> None:
        pass  # the next propose() crops to the shared prefix

    def release(self, request_id: str) -> None:
        self._states.pop(request_id, None)
