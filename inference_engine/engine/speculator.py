"""Speculator: which proposer drafts for a request, how many tokens, and what the outcome taught.

It owns everything speculation decides, so the core only runs the step: the proposers (one suffix
index per tenant), the adaptive controller and its verify-cost model (seeded by calibration on
first use), the shadow drafts that let `auto` see acceptance recover while it decodes plainly,
and the grammar's cut of each draft. The core calls propose → observe → release.
"""
from __future__ import annotations

from typing import Optional, Sequence

from transformers import PreTrainedModel

from kv_cache_proposer.base import Draft, PlainProposer, Proposer
from kv_cache_proposer.draft_model import DraftModelProposer
from kv_cache_proposer.ngram import NgramProposer
from kv_cache_proposer.suffix import SuffixProposer

from ..config import EngineConfig
from ..types import SPEC_METHODS
from .acceptance import Acceptance
from .adaptive import AdaptiveController
from .calibration import cost_curve
from .cost_model import CostModel
from .request import Request
from .verifier import Verifier


class Speculator:
    def __init__(self, config: EngineConfig, verifier: Verifier, max_context: int,
                 draft_model: Optional[PreTrainedModel] = None):
        self.config, self.verifier, self.max_context = config, verifier, max_context
        self.proposers: dict[str, Proposer] = {
            "none": PlainProposer(),
            "ngram": NgramProposer(config.ngram_max, config.ngram_min),
        }
        if draft_model is not None:  # on the same fast path (or eager fallback) as the verifier
            runner = Verifier(draft_model, 1, config.fast_path, config.compile, config.cuda_graphs)
            self.proposers["draft"] = DraftModelProposer(draft_model, runner)
        self._suffixes: dict[str, SuffixProposer] = {"": SuffixProposer(config.suffix_cache_tokens)}
        self._controller: Optional[AdaptiveController] = None
        self._costs: Optional[CostModel] = None
        self._shadow: dict[str, int] = {}  # auto requests at k = 0: the token the proposer would have drafted

    @property
    def methods(self) -> tuple[str, ...]:
        """What this engine serves: `suffix`, `auto` (the suffix index, k chosen per step) and its proposers."""
        return tuple(m for m in SPEC_METHODS if m in self.proposers or m in ("suffix", "auto"))

    @property
    def controller(self) -> AdaptiveController:
        self._build_adaptive()
        return self._controller

    @property
    def costs(self) -> CostModel:
        self._build_adaptive()
        return self._costs

    def _build_adaptive(self) -> None:
        """The controller and its cost model, on first use: calibrating the seed takes a few forwards."""
        if self._controller is None:
            self._costs = CostModel(cost_curve(self.verifier, self.config), online=self.config.cost_curve is None)
            self._controller = AdaptiveController()

    def suffix_for(self, tenant: str) -> SuffixProposer:
        """Each tenant drafts only from its own past requests: a shared index would leak prompts."""
        if tenant not in self._suffixes:
            self._suffixes[tenant] = SuffixProposer(self.config.suffix_cache_tokens)
        return self._suffixes[tenant]

    @property
    def suffix_index_tokens(self) -> int:
        return sum(s.num_tokens for s in self._suffixes.values())

    def proposer_for(self, req: Request) -> Proposer:
        if req.spec.method in ("suffix", "auto"):
            return self.suffix_for(req.tenant)
        return self.proposers[req.spec.method]

    # -- a step: propose, then observe what the verifier made of it --------------------

    def propose(self, batch: Sequence[Request]) -> list[Draft]:
        """One draft per request, from one proposer call per (method, tenant) group."""
        drafts: list[Draft] = [Draft([]) for _ in batch]
        groups: dict[tuple[str, str], list[int]] = {}
        for i, req in enumerate(batch):
            groups.setdefault((req.spec.method, req.tenant), []).append(i)
        for (method, _), idx in groups.items():
            caps = [self._cap(batch[i]) for i in idx]
            ks = [self._choose_k(batch[i], cap, len(batch)) for i, cap in zip(idx, caps)]
            # auto at k = 0 still asks for one token, a shadow draft: compared with what the verifier
            # emits, it shows acceptance recovering without paying for a verify
            asked = [max(k, 1) if method == "auto" and cap else k for k, cap in zip(ks, caps)]
            proposer = self.proposer_for(batch[idx[0]])
            for i, k, a, draft in zip(idx, ks, asked, proposer.propose([batch[i] for i in idx], asked)):
                drafts[i] = self._constrain(batch[i], draft.truncate(k), proposer)
                if k < a and draft.tokens:
                    self._shadow[batch[i].request_id] = draft.tokens[0]
        return drafts

    def observe(self, batch: Sequence[Request], drafts: Sequence[Draft], outcomes: Sequence[Acceptance],
                seconds: Optional[float]) -> None:
        """What the verifier accepted; `seconds`: the step's time where it was a pure decode/verify
        step (every request fed one uncached token), else None."""
        if seconds is not None and self._costs is not None:
            k, context = max(len(d.tokens) for d in drafts), max(r.num_tokens for r in batch)
            self._costs.observe(k, len(batch), context, seconds)
        for req, draft, out in zip(batch, drafts, outcomes):
            if rejected := out.num_drafted - out.num_accepted:
                self.proposer_for(req).rewind(req.request_id, rejected)
            if req.spec.method == "auto" and out.num_drafted and not draft.forced:  # forced: no news of the proposer
                self.controller.observe(req.request_id, out.num_drafted, out.num_accepted)
            shadow = self._shadow.pop(req.request_id, None)
            if shadow is not None:
                self.controller.observe(req.request_id, 1, int(out.tokens[0] == shadow))

    def release(self, req: Request) -> None:
        """The request ended: free its state; its text joins its tenant's suffix index."""
        self.proposer_for(req).release(req.request_id)
        self._shadow.pop(req.request_id, None)
        if self._controller is not None:
            self._controller.release(req.request_id)
        self.suffix_for(req.tenant).add_sequence(req.token_ids)  # later requests may repeat this one

    # -- how many tokens ----------------------------------------------------------------

    def _cap(self, req: Request) -> int:
        """Never draft past max_tokens or the context window."""
        if req.spec.method == "none":
            return 0
        return max(0, min(req.spec.num_draft_tokens, req.remaining - 1, self.max_context - req.num_tokens))

    def _choose_k(self, req: Request, cap: int, batch_size: int) -> int:
        """`auto` asks the controller, with the verify cost at this batch size and context."""
        if req.spec.method != "auto" or cap == 0:
            return cap
        return self.controller.choose_k(req.request_id, cap, self.costs.curve(batch_size, req.num_tokens))

    def _constrain(self, req: Request, draft: Draft, proposer: Proposer) -> Draft:
        """Cut a draft to what the request's grammar allows (the rest would be rejected anyway);
        the proposer forgets the cut tokens as it does rejected ones. Where nothing is left, the
        tokens the grammar forces (the fixed parts of a JSON object) are a free draft."""
        if req.grammar is None:
            return draft
        n = req.grammar.valid_prefix(draft.tokens)
        if n < len(draft.tokens):
            proposer.rewind(req.request_id, len(draft.tokens) - n)
        if n == 0 and (cap := self._cap(req)):
            forced = req.grammar.forced()[:cap]
            if forced:
                return Draft(forced, forced=True)
        return draft.truncate(n)
