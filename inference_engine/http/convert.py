"""OpenAI request bodies → core values, converted once at the edge (as rpc/convert.py does for
protobuf): the prompt token ids, one Submission per choice. responses.py goes the other way."""
from __future__ import annotations

import hashlib
from typing import Mapping, Optional, Union

from ..engine.validation import Limits
from ..errors import InvalidRequest
from ..tokenizer import apply_chat_template
from ..types import SamplingParams, SpeculativeParams, Submission
from . import screen, tools
from .schemas import ChatCompletionRequest, CompletionRequest

Body = Union[ChatCompletionRequest, CompletionRequest]
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions with a text prompt


def chat_prompt(body: ChatCompletionRequest, tokenizer) -> list[int]:
    """The messages through the model's chat template; tools the template cannot render are stated
    in the system message with the calling convention."""
    messages, native = [m.to_template() for m in body.messages], tools.renders_tools(tokenizer)
    if body.tools and not native:
        messages = tools.inject(messages, body.tools)
    thinking = body.enable_thinking
    if thinking is None and body.forces_tool_call:  # the call is the whole answer
        thinking = False
    return apply_chat_template(tokenizer, messages, tools=body.tools if native else None, enable_thinking=thinking)


def completion_prompts(body: CompletionRequest, tokenizer) -> list[list[int]]:
    return [p if isinstance(p, list) else tokenizer(p, add_special_tokens=False)["input_ids"] for p in body.prompts]


def max_tokens(body: Body, chat: bool) -> Optional[int]:
    if chat:
        return body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if body.max_tokens is None and any(isinstance(p, str) for p in body.prompts):
        return COMPLETIONS_MAX_TOKENS
    return body.max_tokens


def submissions(body: Body, prompts: list[list[int]], chat: bool, headers: Mapping[str, str], tenant: str,
                limits: Limits, tokenizer) -> list[Submission]:
    """One Submission per choice, in OpenAI's order (choice index = prompt index × n + j); the
    engine validates them. A session names one conversation: one prompt, n = 1."""
    for i, prompt in enumerate(prompts):
        if not prompt:
            where = "messages" if chat else "prompt" if len(prompts) == 1 else f"prompt.{i}"
            raise InvalidRequest("prompt is empty: at least one prompt token is required", where)
    slots = [prompt for prompt in prompts for _ in range(body.n)]
    session = body.session_id or screen.session_id(headers.get("x-session-id"), "X-Session-Id")
    if session is not None and len(slots) != 1:
        raise InvalidRequest("a session continues one conversation: one prompt and n = 1 with session_id", "n")
    key = getattr(body, "prompt_cache_key", None)
    hint = session is None and key is not None and len(slots) == 1  # n > 1: a hint that cannot apply
    if hint:
        session = cache_session(key)
    window = None if body.kv_window is None else (body.kv_window.sink, body.kv_window.window)
    spec, grammar, limit = _spec(body, limits.default_spec), _grammar(body, tokenizer), max_tokens(body, chat)
    return [Submission(prompt, _sampling(body, len(prompt), limit, limits, grammar, i), spec, session, True, tenant,
                       kv_window=window, session_hint=hint) for i, prompt in enumerate(slots)]


def cache_session(key: str) -> str:
    """The session a prompt_cache_key keeps its conversation in (any text → a valid session id)."""
    return "pck-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _sampling(body: Body, prompt_len: int, max_tokens: Optional[int], limits: Limits, grammar: Optional[str],
              index: int) -> SamplingParams:
    if max_tokens is None:  # none named: the server's --max-tokens, else the rest of the context
        room = max(1, limits.max_context - prompt_len)
        max_tokens = room if limits.default_max_tokens is None else min(limits.default_max_tokens, room)
    try:
        bias = tuple((int(t), float(b)) for t, b in (body.logit_bias or {}).items())
    except ValueError:
        raise InvalidRequest("logit_bias keys must be token ids (integers as strings)", "logit_bias") from None
    # completions' echo + logprobs also score the prompt (not when streaming: echo is whole-response
    # only); echo alone with max_tokens 0 returns just the prompt, scored without alternatives so the
    # engine takes max_tokens 0 (it refuses 0 for a request that would return nothing)
    echo = getattr(body, "echo", False) and not body.stream
    prompt_logprobs = body.logprobs if body.logprobs is not None or max_tokens else 0
    temperature = limits.default_temperature if body.temperature is None else body.temperature
    return SamplingParams(
        max_tokens, temperature, max(body.top_k, 0), body.top_p, body.min_p,
        seed=None if body.seed is None else body.seed + index, logprobs=body.num_logprobs,
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty, logit_bias=bias,
        ignore_eos=body.ignore_eos, grammar=grammar,
        prompt_logprobs=prompt_logprobs if echo else None,
    )


def _grammar(body: Body, tokenizer) -> Optional[str]:
    """A forced tool call's grammar, else response_format's; None: unconstrained."""
    if getattr(body, "forces_tool_call", False):
        return tools.grammar(tokenizer, body.tools, body.tool_choice, body.parallel_tool_calls is True)
    fmt = getattr(body, "response_format", None)
    return None if fmt is None else fmt.grammar()


def _spec(body: Body, default: SpeculativeParams) -> SpeculativeParams:
    opt = body.speculative
    if opt is None:
        return default
    return SpeculativeParams(opt.method or default.method,
                             default.num_draft_tokens if opt.num_draft_tokens is None else opt.num_draft_tokens)
