"""EngineCore: the loop. One step = schedule → propose → verify → accept → observe → update."""
from __future__ import annotations

import itertools
import time
from typing import Optional, Sequence

import torch
from transformers import PreTrainedModel

from kv_cache_proposer.base import Draft

from ..cache.kv_cache import KVWindow
from ..cache.session_store import Session, SessionStore, common_prefix
from ..config import EngineConfig
from ..errors import InvalidRequest, SessionBusy, TooManySessions
from ..types import FinishReason, SpecStats, StepStats, Submission, TokenCallback, TokenLogprob
from .acceptance import Acceptance, accept_greedy, accept_sampled
from .grammar import Grammar, GrammarCompiler
from .request import Request
from .sampling import adjust_logits, make_generator, position_generator, target_probs
from .scheduler import Scheduler
from .speculator import Speculator
from .validation import Limits, validate
from .verifier import Verifier


class EngineCore:
    def __init__(
        self,
        model: PreTrainedModel,
        eos_ids: Sequence[int],
        config: EngineConfig = EngineConfig(),
        draft_model: Optional[PreTrainedModel] = None,
    ):
        self.config = config
        self.eos_ids = frozenset(eos_ids)
        self.verifier = Verifier(model, config.max_batch, config.fast_path, config.compile, config.cuda_graphs)
        self.sessions = SessionStore(config.session_cache_bytes, config.session_ttl, config.max_sessions)
        self.scheduler = Scheduler(config.max_running, config.max_waiting)
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048))
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        self.speculator = Speculator(config, self.verifier, self.max_context, draft_model)
        self.grammars: Optional[GrammarCompiler] = None  # set by LLM, which holds the tokenizer
        self.limits = Limits(self.vocab_size, self.max_context, config.max_draft_tokens, self.speculator.methods,
                             config.speculative, config.default_max_tokens, config.default_temperature)
        self._ids = itertools.count()

    def add_request(self, sub: Submission, on_token: Optional[TokenCallback] = None) -> Request:
        """Queue a request, or raise before anything changed. With a session, prompt_ids=None continues
        the session's own history (gRPC); a full prompt (HTTP) replaces it, reusing the KV of the
        prefix they share. `create_session` makes a new session id (HTTP: named by the client) only
        once the request is known to be valid. `tenant` owns sessions and partitions the caches."""
        spec, sampling, prompt_ids = sub.spec or self.config.speculative, sub.sampling, sub.prompt_ids
        session = None
        if sub.session_id is not None and not (sub.create_session and prompt_ids is not None):
            session = self.sessions.get(sub.session_id, sub.tenant)
        if prompt_ids is None:
            if session is None or not session.history:
                raise InvalidRequest("the session has no tokens yet; append tokens before generating", "session_id")
            prompt_ids = list(session.history)
        validate(prompt_ids, sampling, spec, sub.kv_window, self.limits)
        grammar = self._grammar(sampling.grammar)
        self.scheduler.check_capacity()  # Overloaded before any session is touched
        if sub.session_id is not None:
            try:
                session = self.sessions.check_out(sub.session_id, sub.tenant, sub.create_session, sub.session_hint)
            except (SessionBusy, TooManySessions):
                if not sub.session_hint:
                    raise
                session = None  # a cache hint is never an error: this request runs without it
        stop = frozenset(sampling.stop_token_ids) | (frozenset() if sampling.ignore_eos else self.eos_ids)
        if session is not None:
            stop |= frozenset(session.eos_ids)
        req = Request(sub.request_id or f"req-{next(self._ids)}", list(prompt_ids), sampling, spec, stop, on_token,
                      tenant="" if self.config.share_cache_across_keys else sub.tenant)
        req.generator = make_generator(sampling.seed, self.verifier.device)
        req.arrived_at = time.monotonic()
        req.session, req.grammar = session, grammar
        req.kv_window = self._kv_window(sub.kv_window, session)
        self._attach_cache(req)
        self.scheduler.add(req)  # cannot refuse: capacity was checked above, on this same thread
        return req

    def _kv_window(self, w: Optional[tuple[int, int]], session: Optional[Session]) -> Optional[KVWindow]:
        """The request's own window, else its session's, else the server's; (0, 0) or None: full."""
        if w is None and session is not None:
            w = session.kv_window
        w = self.config.kv_window if w is None else w
        return KVWindow(*w) if w and w[1] else None

    def _grammar(self, grammar: Optional[str]) -> Optional[Grammar]:
        if grammar is None:
            return None
        if self.grammars is None:
            raise InvalidRequest("this engine has no tokenizer to compile a grammar with", "response_format")
        return self.grammars.matcher(grammar)

    def _attach_cache(self, req: Request) -> None:
        """Give the request the KV of the longest prefix it shares with its session or the prefix cache."""
        if req.session is not None:
            cache, shared = req.session.cache, common_prefix(req.session.history, req.prompt_ids)
            req.session.cache = None
            if req.sampling.prompt_logprobs is not None:  # scoring the prompt needs every row: re-prefill
                cache = None
        elif self.config.prefix_cache and req.sampling.prompt_logprobs is None and req.kv_window is None:
            cache, shared = self.sessions.take_prefix(req.prompt_ids, req.tenant)  # scoring needs every row
        else:
            cache, shared = None, 0
        if cache is not None and cache.window != req.kv_window:  # KV of another window: not this model's
            cache = None
        if cache is not None:
            keep = min(cache.length, shared, len(req.prompt_ids) - 1)  # the last prompt token is always fed
            cache.trim(cache.length - keep)  # a windowed cache may have to forget everything
            cache.headroom = req.headroom
            req.cache, req.cached_tokens = cache, cache.length

    def abort(self, request_id: str) -> Optional[Request]:
        """End a queued or running request now (finish 'abort'); None if it already finished."""
        req = self.scheduler.find(request_id)
        if req is None:
            return None
        req.finish_reason = FinishReason.ABORT
        self._release(req)
        return req

    def fail(self, req: Request) -> None:
        """Drop a request whose step raised: its KV may be half-written, so a session keeps the
        tokens emitted so far and re-prefills next turn (INV-1 holds with no cache)."""
        req.finish_reason = req.finish_reason or FinishReason.ABORT
        req.cache = None
        if self.scheduler.find(req.request_id) is not None:
            self._release(req)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def step(self) -> StepStats:
        batch = self.scheduler.schedule()
        drafts = self.speculator.propose(batch)
        decoding, forwards, t0 = _decoding(batch), self.verifier.forwards, time.perf_counter()
        logits = self.verify(batch, drafts)  # per request [k+1, V]
        outcomes = [self.accept(r, d, l) for r, d, l in zip(batch, drafts, logits)]  # syncs the device
        self.speculator.observe(batch, drafts, outcomes, time.perf_counter() - t0 if decoding else None)
        return self.update(batch, outcomes, logits, self.verifier.forwards - forwards)

    # -- the parts of a step -------------------------------------------------

    def verify(self, batch: Sequence[Request], drafts: Sequence[Draft]) -> list[torch.Tensor]:
        """Each request's [k+1, V] logits: its drafts and the bonus row, prompt rows scored off."""
        logits = self.verifier.verify(batch, drafts)
        return [self.score_prompt(r, lg) for r, lg in zip(batch, logits)]

    def score_prompt(self, req: Request, logits: torch.Tensor) -> torch.Tensor:
        """A prefill that kept every row (prompt logprobs): rows 0..L-2 score prompt tokens 1..L-1;
        the last k+1 rows go on as usual."""
        if req.sampling.prompt_logprobs is None or req.prompt_logprobs:
            return logits
        scored = req.prompt_ids[1:]
        first = TokenLogprob(req.prompt_ids[0], None, None)  # nothing precedes it: unscored
        rest = _logprobs(logits[: len(scored)], scored, req.sampling.prompt_logprobs) if scored else []
        req.prompt_logprobs = [first, *rest]
        return logits[len(scored):]

    def accept(self, req: Request, draft: Draft, logits: torch.Tensor) -> Acceptance:
        logits = adjust_logits(logits, req.output_ids, draft.tokens, req.sampling)
        if req.grammar is not None:  # on a copy: logprobs report the verifier's raw distribution
            logits = logits.clone()
            req.grammar.mask(logits, draft.tokens)  # every row, the bonus row included
        if req.sampling.greedy:
            return accept_greedy(logits, draft.tokens)
        return accept_sampled(target_probs(logits, req.sampling), draft.tokens, draft.probs, self._generator_at(req))

    def _generator_at(self, req: Request):
        """Seeded requests draw output position i's randomness from a generator keyed by that
        position, so the same seed gives the same text whatever was drafted."""
        seed, start, device = req.sampling.seed, len(req.output_ids), self.verifier.device
        if seed is None:
            return lambda i: None
        return lambda i: position_generator(seed, start + i, device)

    def update(self, batch: Sequence[Request], outcomes: Sequence[Acceptance], logits: Sequence[torch.Tensor],
               forwards: int) -> StepStats:
        """Roll each request's KV back past its rejected drafts, emit its tokens, end the finished."""
        stats = StepStats(len(self.scheduler.running), len(self.scheduler.waiting), forwards)
        for req, out, lg in zip(batch, outcomes, logits):
            req.cache.trim(out.num_drafted - out.num_accepted)  # rollback: rejected drafts' KV is cropped, not copied
            req.cache.settle()  # then a windowed cache gives back what a prefill grew (trim before evict)
            tokens = out.tokens if req.grammar is None else req.grammar.advance(out.tokens)  # cut where it completes
            if req.sampling.logprobs is not None:
                req.logprobs.extend(_logprobs(lg, tokens, req.sampling.logprobs))
            emitted = self._emit(req, tokens)
            if req.grammar is not None and req.grammar.done and not req.finished:  # it allows nothing more
                req.finish_reason = FinishReason.STOP
            step = _step_stats(out, emitted)
            req.stats.add(step)
            stats.spec.add(step)
            if req.finished:
                self._release(req)
        return stats

    def _emit(self, req: Request, tokens: Sequence[int]) -> int:
        """Append tokens until a stop condition; returns how many were kept."""
        if req.remaining <= 0:  # max_tokens 0: the prompt was only scored
            req.finish_reason = FinishReason.LENGTH
            del req.logprobs[len(req.output_ids):]
            return 0
        if tokens and not req.output_ids:
            req.first_token_at = time.monotonic()
        for n, tok in enumerate(tokens, 1):
            req.output_ids.append(tok)
            stop_requested = bool(req.on_token(tok)) if req.on_token else False
            if tok in req.stop_ids or stop_requested:
                req.finish_reason = FinishReason.STOP
            elif req.remaining <= 0:
                req.finish_reason = FinishReason.LENGTH
            if req.finished:
                del req.logprobs[len(req.output_ids):]  # drop those of discarded tokens
                return n
        return len(tokens)

    def _release(self, req: Request) -> None:
        self.scheduler.remove(req)
        self.speculator.release(req)
        if req.session is not None:
            self.sessions.check_in(req.session, req.token_ids, req.cache, req.stats)
        elif self.config.prefix_cache:
            self.sessions.put_prefix(req.token_ids, req.cache, req.tenant)
        req.cache = None


def _decoding(batch: Sequence[Request]) -> bool:
    """Every request feeds one uncached token: a decode/verify step the cost model times."""
    return all(r.cache is not None and r.cache.length == r.num_tokens - 1 for r in batch)


def _logprobs(logits: torch.Tensor, tokens: Sequence[int], top: int) -> list[TokenLogprob]:
    """Exact verifier log-probs of the emitted tokens: row i of [k+1, V] scored token i."""
    lp = logits[: len(tokens)].float().log_softmax(-1)  # [n, V]
    chosen = lp.gather(-1, torch.tensor(list(tokens), device=lp.device)[:, None]).squeeze(-1).tolist()
    alts = lp.topk(top, dim=-1) if top > 0 else None
    out = []
    for i, tok in enumerate(tokens):
        pairs = tuple(zip(alts.indices[i].tolist(), alts.values[i].tolist())) if alts is not None else ()
        out.append(TokenLogprob(tok, chosen[i], pairs))
    return out


def _step_stats(out: Acceptance, emitted: int) -> SpecStats:
    """Stats for the tokens actually emitted (a stop inside accepted drafts discards the rest)."""
    accepted = min(out.num_accepted, emitted)
    final = emitted - accepted  # 0 or 1: the recovered/bonus/plain token, if it was emitted
    s = SpecStats(verify_steps=1, drafts=int(out.num_drafted > 0), draft_tokens=out.num_drafted)
    s.accepted_tokens = accepted
    s.accepted_per_pos = [1] * accepted + [0] * (out.num_drafted - accepted)
    kind = out.kind
    s.plain_steps = final if kind == "plain" else 0
    s.bonus_tokens = final if kind == "bonus" else 0
    s.recovered_tokens = final if kind == "recovered" else 0
    return s
