"""OpenAI response shapes for chat and text completions, streamed or whole.

A `Completion` holds what one request needs (ids, prompt, n choices); chat choices run their
text through the Qwen3 OutputParser (reasoning, tool calls) and text choices do not.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator, Callable, Optional

from ..engine.request_stream import SessionInfo
from ..types import SpecStats, TokenLogprob
from .generation import ChoiceEnd, Delta, Piece, merge_choices
from .errors import sse_error
from .parsers import OutputParser


def spec_dict(spec: SpecStats) -> dict:
    return {
        "drafts": spec.drafts, "draft_tokens": spec.draft_tokens, "accepted_tokens": spec.accepted_tokens,
        "accepted_per_position": spec.accepted_per_pos, "recovered_tokens": spec.recovered_tokens,
        "bonus_tokens": spec.bonus_tokens, "plain_steps": spec.plain_steps, "verify_steps": spec.verify_steps,
        "acceptance_rate": spec.acceptance_rate, "mean_accepted_length": spec.mean_accepted_length,
    }


def session_info(s: SessionInfo) -> dict:
    return {
        "id": s.session_id, "object": "session", "history_length": s.history_length,
        "kv_cached_tokens": s.kv_cached_tokens, "kv_bytes": s.kv_bytes, "idle_seconds": round(s.idle_seconds, 3),
        "busy": s.busy, "speculative": spec_dict(s.stats),
    }


def _spec_total(ends: list[ChoiceEnd]) -> SpecStats:
    """Speculation accounting summed over a request's choices."""
    spec = SpecStats()
    for e in ends:
        spec.add(e.spec)
    return spec


def peer_stats(prompt_len: int, ends: list[ChoiceEnd]) -> dict:
    """The same request's numbers in the shapes tools written for the peers read: llama-server's
    `timings` and vLLM's speculative-decoding summary (`metrics.speculative_decoding`)."""
    spec = _spec_total(ends)
    cached = max((e.cached_tokens for e in ends), default=0)
    predicted = sum(e.completion_tokens for e in ends)
    prompt_s = max((e.timings.prefill for e in ends if e.timings), default=0.0)
    decode_s = max((e.timings.decode for e in ends if e.timings), default=0.0)
    per_s = lambda n, s: round(n / s, 3) if s > 0 else None  # noqa: E731
    timings = {"cache_n": cached, "prompt_n": prompt_len - cached, "prompt_ms": round(prompt_s * 1e3, 3),
               "prompt_per_second": per_s(prompt_len - cached, prompt_s), "predicted_n": predicted,
               "predicted_ms": round(decode_s * 1e3, 3), "predicted_per_second": per_s(predicted, decode_s),
               "draft_n": spec.draft_tokens, "draft_n_accepted": spec.accepted_tokens}
    vllm = {"num_spec_steps": spec.drafts, "num_draft_tokens": spec.draft_tokens,
            "num_accepted_tokens": spec.accepted_tokens,
            "mean_acceptance_length": round(1 + spec.accepted_tokens / spec.drafts, 4) if spec.drafts else None,
            "draft_acceptance_rate": round(spec.accepted_tokens / spec.draft_tokens, 4) if spec.draft_tokens else None}
    return {"timings": timings, "metrics": {"speculative_decoding": vllm}}


SYSTEM_FINGERPRINT = "kakeya"  # OpenAI's field for "the backend configuration"; constant here


def usage(prompt_len: int, ends: list[ChoiceEnd], reasoning_tokens: int = 0) -> dict:
    spec = _spec_total(ends)
    completion = sum(e.completion_tokens for e in ends)
    return {
        "prompt_tokens": prompt_len, "completion_tokens": completion, "total_tokens": prompt_len + completion,
        "prompt_tokens_details": {"cached_tokens": max((e.cached_tokens for e in ends), default=0)},
        # reasoning_tokens: the reasoning text re-tokenized (the parser splits text, not tokens)
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens, "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
        "speculative": spec_dict(spec),
    }


class Completion:
    def __init__(self, chat: bool, model: str, prompt_len: int, n: int, tokenizer, tools: bool, want_logprobs: bool,
                 return_token_ids: bool = False):
        self.chat, self.model, self.prompt_len, self.n = chat, model, prompt_len, n
        self.return_token_ids = return_token_ids
        self.include_usage = False  # set by stream()
        self.tokenizer, self.want_logprobs = tokenizer, want_logprobs
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.parsers = [OutputParser(tools) for _ in range(n)] if chat else None
        self.offsets = [0] * n  # text offset per choice, for completions logprobs
        self.reasoning = [""] * n  # per chat choice: the reasoning text, for usage's reasoning_tokens

    def _usage(self, ends: list[ChoiceEnd]) -> dict:
        text = "".join(self.reasoning)
        return usage(self.prompt_len, ends, len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0)

    # -- logprobs ----------------------------------------------------------------

    def _token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def logprobs(self, i: int, lps: list[TokenLogprob]) -> Optional[dict]:
        if not self.want_logprobs:
            return None
        if self.chat:
            def entry(tid: int, lp: float) -> dict:
                tok = self._token(tid)
                return {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8"))}
            return {"content": [dict(entry(t.token_id, t.logprob), top_logprobs=[entry(a, b) for a, b in t.top]) for t in lps],
                    "refusal": None}  # OpenAI's field: the logprobs of refusal tokens (never produced here)
        tokens = [self._token(t.token_id) for t in lps]
        offsets = []
        for tok in tokens:
            offsets.append(self.offsets[i])
            self.offsets[i] += len(tok)
        return {"tokens": tokens, "token_logprobs": [t.logprob for t in lps],
                "top_logprobs": [{self._token(a): b for a, b in t.top} for t in lps], "text_offset": offsets}

    def _with_prompt(self, prompt: list, generated: dict) -> dict:
        """Completions' echo + logprobs: the prompt tokens' entries first (the first token's
        logprob and alternatives are null, as OpenAI and vLLM report them), offsets from 0."""
        tokens, offsets, at = [], [], 0
        for t in prompt:
            tokens.append(self._token(t.token_id))
            offsets.append(at)
            at += len(tokens[-1])
        return {"tokens": tokens + generated["tokens"],
                "token_logprobs": [t.logprob for t in prompt] + generated["token_logprobs"],
                "top_logprobs": [None if t.top is None else {self._token(a): b for a, b in t.top} for t in prompt]
                + generated["top_logprobs"],
                "text_offset": offsets + [at + o for o in generated["text_offset"]]}

    # -- whole response -----------------------------------------------------------

    async def collect(self, streams: list[AsyncIterator[Piece]], echo: Optional[list[str]] = None
                      ) -> tuple[dict, list[ChoiceEnd]]:
        """The whole response; echo[i]: text put before choice i's (completions' `echo`)."""
        echo = echo or [""] * self.n
        texts, lps = [""] * self.n, [[] for _ in range(self.n)]
        ends: list[Optional[ChoiceEnd]] = [None] * self.n
        async for i, piece in merge_choices(streams):
            if isinstance(piece, ChoiceEnd):
                ends[i] = piece
            else:
                texts[i] += piece.text
                lps[i].extend(piece.logprobs)
        done = [e for e in ends if e is not None]
        choices = [self._choice(i, texts[i], lps[i], ends[i], echo[i]) for i in range(self.n)]
        if self.return_token_ids:
            for c, e in zip(choices, ends):
                c["token_ids"] = e.token_ids
        obj = "chat.completion" if self.chat else "text_completion"
        body = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                "usage": self._usage(done), "system_fingerprint": SYSTEM_FINGERPRINT, "service_tier": "default",
                **peer_stats(self.prompt_len, done)}
        return body, done

    def _choice(self, i: int, text: str, lps: list[TokenLogprob], end: ChoiceEnd, echo: str) -> dict:
        finish = end.finish_reason
        if not self.chat:
            logprobs = self.logprobs(i, lps)
            if echo and logprobs is not None and end.prompt_logprobs is not None:
                logprobs = self._with_prompt(end.prompt_logprobs, logprobs)
            return {"index": i, "text": echo + text, "logprobs": logprobs, "finish_reason": finish}
        p = self.parsers[i].parse_all(text)
        message: dict = {"role": "assistant", "content": p.content if (p.content or not p.tool_calls) else None,
                         "refusal": None}
        if p.reasoning:  # vLLM and Ollama name it `reasoning`, older clients read `reasoning_content`
            message["reasoning"] = message["reasoning_content"] = p.reasoning
            self.reasoning[i] = p.reasoning
        if p.tool_calls:
            message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in p.tool_calls]
            finish = "tool_calls" if finish == "stop" else finish
        return {"index": i, "message": message, "logprobs": self.logprobs(i, lps), "finish_reason": finish}

    # -- streaming ------------------------------------------------------------------

    last_event = {"data": "[DONE]"}

    @staticmethod
    def error_event(e: BaseException) -> dict:
        """An error after the headers went out travels in-band."""
        return {"event": "error", "data": sse_error(e)}

    def chunk(self, choices: list, usage_: Optional[dict] = None, extra: Optional[dict] = None) -> dict:
        out = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
               "created": self.created, "model": self.model, "system_fingerprint": SYSTEM_FINGERPRINT,
               "service_tier": "default", "choices": choices}
        if usage_ is not None or self.include_usage:  # with include_usage, null on every chunk but the last
            out["usage"] = usage_
        return {"data": json.dumps({**out, **(extra or {})}, ensure_ascii=False)}

    async def stream(self, streams: list[AsyncIterator[Piece]], include_usage: bool,
                     on_done: Callable[[list[ChoiceEnd]], None], echo: Optional[list[str]] = None) -> AsyncIterator[dict]:
        """SSE events; echo[i]: completions' prompt text, sent as choice i's first chunk."""
        ends: list[ChoiceEnd] = []
        called_tools = [False] * self.n
        self.include_usage = include_usage
        for parser in self.parsers or ():
            parser.stream_args = True  # tool-call arguments go out in pieces as they are generated
        if self.chat:
            for i in range(self.n):
                yield self.chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                   "finish_reason": None}])
        for i, text in enumerate(echo or ()):
            if text:
                yield self.chunk([{"index": i, "text": text, "logprobs": None, "finish_reason": None}])
        async for i, piece in merge_choices(streams):
            if isinstance(piece, Delta):
                for c in self._delta_choices(i, piece, called_tools):
                    yield self.chunk([c])
                continue
            if self.chat:  # anything the parser still holds
                for c in self._delta_choices(i, Delta(""), called_tools, final=True):
                    yield self.chunk([c])
            ends.append(piece)
            finish = "tool_calls" if called_tools[i] and piece.finish_reason == "stop" else piece.finish_reason
            delta = {"delta": {}} if self.chat else {"text": ""}
            yield self.chunk([{"index": i, **delta, "logprobs": None, "finish_reason": finish}])
        if include_usage:
            yield self.chunk([], self._usage(ends), peer_stats(self.prompt_len, ends))
        on_done(ends)

    def _delta_choices(self, i: int, piece: Delta, called_tools: list[bool], final: bool = False) -> list[dict]:
        lp = self.logprobs(i, piece.logprobs) if piece.logprobs else None
        if not self.chat:
            return [{"index": i, "text": piece.text, "logprobs": lp, "finish_reason": None}]
        parser = self.parsers[i]
        p = parser.flush() if final else parser.push(piece.text)
        out = []
        if p.reasoning:
            self.reasoning[i] += p.reasoning
            out.append({"reasoning": p.reasoning, "reasoning_content": p.reasoning})
        if p.content:
            out.append({"content": p.content})
        if p.tool_calls:
            called_tools[i] = True
            out.append({"tool_calls": p.tool_calls})
        if lp and not out:
            out.append({})
        return [{"index": i, "delta": d, "logprobs": lp if j == 0 else None, "finish_reason": None}
                for j, d in enumerate(out)]

