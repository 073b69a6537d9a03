"""Grammar-constrained decoding (structured output) through llguidance, lossless under speculation.

A request's grammar (an llguidance grammar as JSON text: a JSON schema, a Lark grammar, ...)
becomes a matcher that tracks the tokens emitted so far. Each verify step:

- drafts are cut to the prefix the grammar allows (`valid_prefix`): a forbidden draft token
  would be rejected anyway, since its masked probability is 0 — cutting it only saves the rows;
- every verify row gets the mask of the tokens allowed after the drafts before it (`mask`), so
  greedy and rejection-sampled acceptance see the constrained distribution, bonus row included;
- the emitted tokens advance the matcher (`advance`); a grammar that allows nothing more
  (`done`) ends the request with finish reason "stop";
- tokens the grammar forces (`forced`, e.g. the fixed parts of a JSON object) are free drafts:
  their masked distribution is a point mass, so they are always accepted.

Greedy output is therefore the same with or without speculation, as without a grammar.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional, Sequence

import llguidance
import llguidance.hf
import llguidance.torch as llt
import torch

from ..errors import InvalidRequest


class GrammarCompiler:
    """Builds matchers against one tokenizer. Compiling is slow the first time (the llguidance
    tokenizer ≈ 1 s for a 150k vocabulary, then up to seconds for the first masks, which build
    the lexer lazily), so the edge calls `prepare` in a worker thread before admitting a request:
    the compiled, warmed matcher is kept as a template (LRU by grammar text) and the engine
    thread only copies it (µs). Engines that never see a grammar never pay any of it."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: Sequence[int], keep: int = 64):
        self._hf, self.vocab_size, self._eos, self._keep = tokenizer, vocab_size, list(eos_ids), keep
        self._tokenizer: Optional[llguidance.LLTokenizer] = None
        self._templates: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()  # the edge's worker threads prepare while the engine thread copies

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.hf.from_tokenizer(self._hf, n_vocab=self.vocab_size,
                                                               eos_token=self._eos[0] if self._eos else None)
            return self._tokenizer

    def prepare(self, grammar: str) -> None:
        """Compile and warm `grammar` (blocking: call it off the engine thread); InvalidRequest if it
        does not compile."""
        with self._lock:
            if grammar in self._templates:
                self._templates.move_to_end(grammar)
                return
        template = _compile(self.tokenizer, grammar)
        template.compute_bitmask()  # the first mask builds the lexer states the copies share
        with self._lock:
            self._templates[grammar] = template
            while len(self._templates) > self._keep:
                self._templates.popitem(last=False)

    def matcher(self, grammar: str) -> "Grammar":
        """A fresh matcher at the grammar's start: a copy of the prepared template, else compiled here."""
        with self._lock:
            template = self._templates.get(grammar)
        return Grammar(template.deep_copy() if template is not None else _compile(self.tokenizer, grammar),
                       self.vocab_size)


def _compile(tokenizer: llguidance.LLTokenizer, grammar: str) -> llguidance.LLMatcher:
    try:
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    except (ValueError, TypeError) as e:  # malformed grammar JSON
        raise InvalidRequest(f"the grammar does not compile: {e}", "response_format") from None
    if matcher.is_error():
        raise InvalidRequest(f"the grammar does not compile: {matcher.get_error()}", "response_format")
    return matcher


_BITS = {}  # device → [32] int32 bit positions


def allowed(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """Bool [rows, vocab] from llguidance's packed int32 bitmask [rows, ceil(V/32)] (bit j of word
    w: token 32·w + j). Eager on purpose: llguidance's own apply kernel is torch.compile'd, which
    costs seconds on first use and recompiles for each new number of rows."""
    bits = _BITS.get(bitmask.device)
    if bits is None:
        bits = _BITS[bitmask.device] = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    return ((bitmask[:, :, None] >> bits) & 1).bool().flatten(1)[:, :vocab]


class Grammar:
    """One request's position in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int):
        self.matcher, self.vocab_size = matcher, vocab_size

    def valid_prefix(self, tokens: Sequence[int]) -> int:
        """How many of `tokens`, in order, the grammar allows from here."""
        return self.matcher.validate_tokens(list(tokens)) if tokens else 0

    def forced(self) -> list[int]:
        """The tokens the grammar forces next, whatever the model says (may be empty)."""
        return list(self.matcher.compute_ff_tokens())

    def mask(self, logits: torch.Tensor, drafts: Sequence[int]) -> None:
        """Forbidden tokens → -inf in each row of logits [k+1, V]: row i is masked by the state after
        drafts[:i] (all of which the grammar allows: see valid_prefix)."""
        rows = len(drafts) + 1
        bitmask = llt.allocate_token_bitmask(rows, self.vocab_size)  # [k+1, ceil(V/32)] int32, CPU
        for i in range(rows):
            llt.fill_next_token_bitmask(self.matcher, bitmask, i)
            if i < len(drafts):
                self.matcher.consume_token(drafts[i])
        if drafts:
            self.matcher.rollback(len(drafts))
        logits.masked_fill_(~allowed(bitmask.to(logits.device), logits.shape[-1]), float("-inf"))

    def advance(self, tokens: Sequence[int]) -> list[int]:
        """Consume a step's tokens; returns those up to where the grammar completes (a verify
        step can carry a bonus token past the end, which plain decoding would never produce)."""
        for n, tok in enumerate(tokens, 1):
            if not self.matcher.consume_token(tok):
                raise RuntimeError(f"grammar refused emitted token {tok}: {self.matcher.get_error()}")
            if self.matcher.is_stopped():
                return list(tokens[:n])
        return list(tokens)

    @property
    def done(self) -> bool:
        """The grammar allows no further token: the output is complete."""
        return self.matcher.is_stopped()
