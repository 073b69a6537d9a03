"""OpenAI wire format (the subset Kakeya honours). The OpenAI fields Kakeya does not implement are
refused by name (UNSUPPORTED); other unknown fields are ignored and logged, as vLLM does (OpenAI
itself answers 400)."""
from __future__ import annotations

import json
import logging
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import llguidance

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, WithJsonSchema,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from ..errors import InvalidRequest
from ..types import SPEC_METHODS
from . import screen

FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names
log = logging.getLogger(__name__)
# OpenAI request fields that would change the answer and that Kakeya does not implement: a 400 naming
# them, never a silent no-op. Value: what to use instead.
UNSUPPORTED = {
    "functions": "the deprecated functions API: send tools", "function_call": "deprecated: send tool_choice",
    "audio": "audio output is not supported", "prediction": "predicted outputs are not supported",
    "suffix": "insertion (a text after the completion) is not supported",
    "web_search_options": "web search is not supported",
}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Screened(_Lenient):
    """A request body of any of the APIs: the hostile-input table first (screen.py), then an explicit
    null read as "the default" (as OpenAI reads it: the openai client sends `temperature=None` as
    null), then the fields this API refuses by name (`_refuse`); any other unknown field is ignored
    and said in the log, as vLLM does (`KNOWN_EXTRA`: fields read in `_refuse`, not declared)."""

    KNOWN_EXTRA: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _screen(cls, data: Any) -> Any:
        if isinstance(data, dict):
            screen.screen(data)
            data = {k: v for k, v in data.items() if v is not None}
            cls._refuse(data)
            unknown = sorted(set(data) - set(cls.model_fields) - cls.KNOWN_EXTRA)
            if unknown:
                log.warning("ignored unknown request fields: %s", ", ".join(unknown)[:200])
        return data

    @classmethod
    def _refuse(cls, data: dict) -> None:
        """Raise InvalidRequest naming a field this API does not implement."""


def _refuse_unsupported(data: dict) -> None:
    for name, hint in UNSUPPORTED.items():
        if name in data:
            raise InvalidRequest(f"{name} is not supported by this server: {hint}", name)
    if "audio" in (data.get("modalities") or ()):
        raise InvalidRequest("modalities: audio output is not supported (only text)", "modalities")
    best_of, n = data.get("best_of"), data.get("n", 1)
    if best_of is not None and best_of not in (1, n):  # best_of > n: generate more, return the likeliest n
        raise InvalidRequest(f"best_of {best_of!r} is not supported (only best_of = n): ask for n choices instead",
                             "best_of")


class TextPart(_Lenient):
    type: Literal["text"] = "text"
    text: str


class RefusalPart(_Lenient):
    """An assistant turn's refusal, as the OpenAI client sends it back in history."""
    type: Literal["refusal"]
    refusal: str


class FunctionCall(_Lenient):
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, v: str) -> str:
        try:
            parsed = json.loads(v)
        except ValueError as e:
            raise PydanticCustomError("json_invalid", "arguments must be a JSON object as text: {error}",
                                      {"error": str(e)}) from None
        if not isinstance(parsed, dict):
            raise PydanticCustomError("json_type", "arguments must be a JSON object as text")
        return v


class ToolCall(_Lenient):
    """A call an assistant turn made; chat templates read `function.name`/`.arguments` and fail
    on anything less, so the shape is checked here (a 400, not a template crash)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(_Lenient):
    name: str = Field(pattern=FUNCTION_NAME)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None


class ToolDefinition(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDefinition


def _check_tool(tool: dict[str, Any]) -> dict[str, Any]:
    ToolDefinition.model_validate(tool)  # errors are located under tools.<i>
    return tool


_Tool = Annotated[dict[str, Any], AfterValidator(_check_tool)]
_TOOLS_SCHEMA = {"anyOf": [{"type": "array", "items": {
    "type": "object", "required": ["function"],
    "properties": {"type": {"const": "function"}, "function": {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string"}, "description": {"type": "string"}, "parameters": {"type": "object"}}}},
}}, {"type": "null"}]}

_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1}]}  # present: not null, not []


class ChatMessage(_Lenient):
    """OpenAI's per-role rules: every role needs `content` except an assistant turn that carries
    `tool_calls`; a tool turn also needs `tool_call_id`. Fields are ordered so each check sees
    the fields it depends on (pydantic validates in declaration order)."""

    # The same rules in /openapi.json, so clients (and the fuzz test's generator) can see them.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"anyOf": [
        {"properties": {"role": {"enum": ["system", "developer", "user", "assistant"]}, "content": _CONTENT},
         "required": ["content"]},
        {"properties": {"role": {"const": "assistant"}, "tool_calls": {"type": "array", "minItems": 1}},
         "required": ["tool_calls"]},
        {"properties": {"role": {"const": "assistant"}, "refusal": {"type": "string"}}, "required": ["refusal"]},
        {"properties": {"role": {"const": "tool"}, "content": _CONTENT, "tool_call_id": {"type": "string"}},
         "required": ["content", "tool_call_id"]},
    ]})

    role: Literal["system", "developer", "user", "assistant", "tool"]
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    refusal: Optional[str] = None  # an assistant turn that refused, as the openai client sends it back
    reasoning_content: Optional[str] = None  # an assistant turn's reasoning (Qwen3's template may render it)
    tool_call_id: Optional[str] = Field(default=None, validate_default=True)
    content: Optional[Union[str, list[Union[TextPart, RefusalPart]]]] = Field(default=None, validate_default=True)

    @field_validator("tool_call_id")
    @classmethod
    def _tool_needs_id(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        if v is None and info.data.get("role") == "tool":
            raise PydanticCustomError("missing", "a tool message needs tool_call_id (the id of the call it answers)")
        return v

    @field_validator("content")
    @classmethod
    def _content_required(cls, v, info: ValidationInfo):
        role = info.data.get("role")  # absent when role itself failed; that error is reported instead
        if role is None:
            return v
        if isinstance(v, list) and not v:
            raise PydanticCustomError("too_short", "content must not be an empty array")
        if v is None and not (role == "assistant" and (info.data.get("tool_calls") or info.data.get("refusal"))):
            need = "an assistant message needs content, tool_calls or refusal" if role == "assistant" else \
                f"a {role} message needs content"
            raise PydanticCustomError("missing", need)
        return v

    def to_template(self) -> dict[str, Any]:
        """The dict a chat template expects: content as one string."""
        content = self.content if isinstance(self.content, str) or self.content is None else \
            "".join(p.text if isinstance(p, TextPart) else p.refusal for p in self.content)
        msg: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role,
                               "content": content or self.refusal or ""}
        for key in ("name", "tool_call_id", "reasoning_content"):
            if getattr(self, key) is not None:
                msg[key] = getattr(self, key)
        if self.tool_calls is not None:
            msg["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        return msg


class _FunctionName(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: _FunctionName


class _AllowedTools(_Lenient):
    mode: Literal["auto", "required"]
    tools: list[NamedToolChoice] = Field(min_length=1)


class AllowedToolsChoice(_Lenient):
    """Only these of `tools` may be called, under `mode` (OpenAI's allowed_tools)."""
    type: Literal["allowed_tools"]
    allowed_tools: _AllowedTools


class JsonSchemaFormat(_Lenient):
    name: str = Field(default="response", pattern=FUNCTION_NAME)  # OpenAI requires it; llama.cpp does not
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Lenient):
    """`text`, `json_object` or `json_schema` (its `json_schema.name` and `schema`); `json_object`
    may carry a `schema` (llama.cpp's extension)."""
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None
    schema_: Optional[dict[str, Any]] = Field(default=None, alias="schema")

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise PydanticCustomError("missing", "response_format of type json_schema needs json_schema")
        return self

    def grammar(self) -> Optional[str]:
        """The llguidance grammar the output must match (None for text). Compact JSON (no free
        whitespace between tokens): a model that may pad with whitespace sometimes never stops."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            schema = self.schema_ if self.schema_ is not None else {"type": "object"}
        else:
            schema = self.json_schema.schema_ or {}
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})


class StreamOptions(_Lenient):
    include_usage: bool = False


class SpeculativeOptions(_Lenient):
    """Kakeya extension: per-request speculation control."""

    method: Optional[Literal[SPEC_METHODS]] = None
    num_draft_tokens: Optional[int] = Field(default=None, ge=0)


class KVWindowOptions(_Lenient):
    """Kakeya extension: keep the first `sink` and the last `window` positions of this request's KV
    (window 0: the full cache, whatever the server's --kv-window)."""

    sink: int = Field(default=4, ge=0)
    window: int = Field(ge=0)


class _SamplingFields(Screened):
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=0)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)  # None: the server's --temperature (1.0)
    top_p: float = Field(default=1.0, ge=0.0, le=1.0)  # 0 keeps only the most likely token
    top_k: int = Field(default=0, ge=-1)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: Optional[int] = None
    stop: Optional[Union[str, Annotated[list[str], Field(max_length=4)]]] = None  # OpenAI: up to 4
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    speculative: Optional[SpeculativeOptions] = None
    kv_window: Optional[KVWindowOptions] = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: Optional[dict[str, Annotated[float, Field(ge=-100, le=100)]]] = None  # OpenAI's range
    session_id: Optional[str] = Field(default=None, min_length=1, max_length=128)  # extension: keep KV between turns
    return_token_ids: bool = False  # extension (as vLLM): each choice carries its generated token ids
    ignore_eos: bool = False        # extension (as vLLM): generate max_tokens whatever the model says

    KNOWN_EXTRA = frozenset({"modalities", "best_of", "store", "metadata", "service_tier"})

    @classmethod
    def _refuse(cls, data: dict) -> None:
        _refuse_unsupported(data)

    @field_validator("session_id")
    @classmethod
    def _session_id(cls, v: Optional[str]) -> Optional[str]:
        return screen.session_id(v, "session_id")

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None
    # Kept as the client's dicts (they go to the chat template as sent); only their shape is checked.
    tools: Annotated[Optional[list[_Tool]], WithJsonSchema(_TOOLS_SCHEMA)] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice, AllowedToolsChoice]] = None
    # unset: a forced call is one call, as llama.cpp's server defaults (OpenAI's default is true): see docs/api.md
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[ResponseFormat] = None
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high"]] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    # OpenAI's caching hint: keeps this conversation's KV as a session (docs/api.md); never an error
    prompt_cache_key: Optional[str] = Field(default=None, min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _consistent(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true", "top_logprobs")
        choice = self.tool_choice
        if choice not in (None, "none", "auto") and not self.tools:
            raise InvalidRequest("tool_choice names tools but the request has none", "tool_choice")
        names = [t["function"]["name"] for t in self.tools or []]
        named = [choice] if isinstance(choice, NamedToolChoice) else \
            choice.allowed_tools.tools if isinstance(choice, AllowedToolsChoice) else []
        for c in named:
            if c.function.name not in names:
                raise InvalidRequest(f"tool_choice names function {c.function.name!r}, which is not among tools "
                                     f"({', '.join(names)})", "tool_choice")
        if isinstance(choice, AllowedToolsChoice):
            # the model sees and may call only these; then it is plain auto / required over them
            allowed = {c.function.name for c in named}
            self.tools = [t for t in self.tools if t["function"]["name"] in allowed]
            self.tool_choice = choice.allowed_tools.mode
        return self

    @property
    def forces_tool_call(self) -> bool:
        return bool(self.tools) and (self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice))

    @property
    def enable_thinking(self) -> Optional[bool]:
        """chat_template_kwargs.enable_thinking, else what reasoning_effort implies (none/minimal: off)."""
        kwargs = self.chat_template_kwargs or {}
        if "enable_thinking" in kwargs:
            return kwargs["enable_thinking"]
        return None if self.reasoning_effort is None else self.reasoning_effort not in ("none", "minimal")

    @property
    def num_logprobs(self) -> Optional[int]:
        return (self.top_logprobs or 0) if self.logprobs else None


def chat_request(data: dict[str, Any], param: str) -> ChatCompletionRequest:
    """The chat request another API's body converts to (Responses, Anthropic Messages): a conversation
    chat would not take is that body's 400 at `param`, not a 500."""
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InvalidRequest(f"{param} does not make a valid conversation ({where}: {err['msg']})", param) from None


class CompletionRequest(_SamplingFields):
    # minLength/minItems only document it (each applies to its own type); the route refuses an
    # empty prompt with its own message.
    prompt: Union[str, list[int], list[str], list[list[int]]] = Field(json_schema_extra={"minLength": 1, "minItems": 1})
    echo: bool = False
    logprobs: Optional[int] = Field(default=None, ge=0, le=5)  # OpenAI's limit for completions (vLLM: 20)

    @property
    def num_logprobs(self) -> Optional[int]:
        return self.logprobs

    @property
    def prompts(self) -> list[Union[str, list[int]]]:
        """One prompt (a string or token ids) or a batch of them, as a list."""
        p = self.prompt
        if isinstance(p, str) or not p or isinstance(p[0], int):
            return [p]
        return list(p)
