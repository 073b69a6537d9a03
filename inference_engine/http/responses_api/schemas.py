"""Responses API wire format (the subset Kakeya honours). Built-in tools and the features Kakeya does
not implement are refused by name; other unknown fields are ignored and logged, as on chat."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...errors import InvalidRequest
from ..schemas import FUNCTION_NAME, KVWindowOptions, Screened, SpeculativeOptions

ITEMS = ("message", "function_call", "function_call_output", "reasoning")
# fields that would change the answer and are not implemented: a 400 naming them
UNSUPPORTED = {"conversation": "the Conversations API (send previous_response_id)", "prompt": "prompt templates",
               "max_tool_calls": "built-in tool call limits", "top_logprobs": "logprobs on /v1/responses"}
INCLUDABLE = {"reasoning.encrypted_content"}  # the reasoning text, returned for stateless clients (Codex)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["input_text", "output_text"]
    text: str


class MessageItem(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Union[str, list[TextPart]]


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    call_id: str
    output: Union[str, list[TextPart]]


class ReasoningItem(_Lenient):
    type: Literal["reasoning"]
    summary: list[dict[str, Any]] = []
    content: Optional[list[dict[str, Any]]] = None
    encrypted_content: Optional[str] = None

    @property
    def text(self) -> str:
        """Its reasoning: the content's text, else what we returned as encrypted_content."""
        parts = [p.get("text", "") for p in self.content or () if isinstance(p, dict)]
        return "".join(parts) or self.encrypted_content or ""


Item = Annotated[Union[MessageItem, FunctionCallItem, FunctionCallOutputItem, ReasoningItem], Field(discriminator="type")]


class FunctionTool(_Lenient):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class NamedFunction(_Lenient):
    type: Literal["function"]
    name: str


class AllowedTools(_Lenient):
    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[NamedFunction] = Field(min_length=1)


class TextFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    name: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None
    description: Optional[str] = None


class TextConfig(_Lenient):
    format: Optional[TextFormat] = None
    verbosity: Optional[str] = None  # accepted: a hint to larger models, nothing to honour here


class ReasoningConfig(_Lenient):
    effort: Optional[Literal["none", "minimal", "low", "medium", "high", "xhigh"]] = None
    summary: Optional[Literal["auto", "concise", "detailed"]] = None  # no summarizer: reasoning comes whole


class ResponsesRequest(Screened):
    model: Optional[str] = None
    input: Union[str, list[Item]]
    instructions: Optional[str] = None
    tools: Optional[list[FunctionTool]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedFunction, AllowedTools]] = None
    parallel_tool_calls: Optional[bool] = None
    text: Optional[TextConfig] = None
    max_output_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    reasoning: Optional[ReasoningConfig] = None
    metadata: Optional[dict[str, str]] = None
    user: Optional[str] = None
    store: bool = True
    previous_response_id: Optional[str] = None
    prompt_cache_key: Optional[str] = Field(default=None, min_length=1, max_length=1024)
    include: Optional[list[str]] = None
    truncation: Optional[Literal["disabled"]] = None  # "auto" (drop the middle when too long) is refused
    stream: bool = False
    service_tier: Optional[str] = None
    safety_identifier: Optional[str] = None
    # Kakeya extensions, as on chat completions
    speculative: Optional[SpeculativeOptions] = None
    kv_window: Optional[KVWindowOptions] = None

    KNOWN_EXTRA = frozenset({"background"})  # read in _refuse (refused when true)

    @classmethod
    def _refuse(cls, data: dict) -> None:
        _refuse_unsupported(data)

    @model_validator(mode="after")
    def _consistent(self) -> "ResponsesRequest":
        names = [t.name for t in self.tools or ()]
        choice = self.tool_choice
        if choice not in (None, "none", "auto") and not names:
            raise InvalidRequest("tool_choice names tools but the request has none", "tool_choice")
        for c in [choice] if isinstance(choice, NamedFunction) else choice.tools if isinstance(choice, AllowedTools) else []:
            if c.name not in names:
                raise InvalidRequest(f"tool_choice names function {c.name!r}, which is not among tools "
                                     f"({', '.join(names)})", "tool_choice")
        for value in self.include or ():
            if value not in INCLUDABLE:
                raise InvalidRequest(f"include {value!r} is not supported (only {', '.join(sorted(INCLUDABLE))})",
                                     "include")
        return self


def _refuse_unsupported(data: dict) -> None:
    for name, what in UNSUPPORTED.items():
        if name in data:
            raise InvalidRequest(f"{name} is not supported by this server ({what})", name)
    if data.get("background"):
        raise InvalidRequest("background responses are not supported: send the request and wait, or stream it",
                             "background")
    if data.get("truncation") == "auto":
        raise InvalidRequest("truncation 'auto' is not supported: a conversation longer than the context is a 400",
                             "truncation")
    for i, tool in enumerate(data.get("tools") or ()):
        if isinstance(tool, dict) and tool.get("type") != "function":
            raise InvalidRequest(f"built-in tool {tool.get('type')!r} is not supported: only function tools",
                                 f"tools.{i}.type")
    items = data.get("input") if isinstance(data.get("input"), list) else ()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        if "type" not in item and "role" in item:
            item["type"] = "message"  # the easy form: {"role": ..., "content": ...}
        if item.get("type") not in ITEMS:
            raise InvalidRequest(f"input items of type {item.get('type')!r} are not supported (only "
                                 f"{', '.join(ITEMS)})", f"input.{i}.type")
        for j, part in enumerate(item.get("content") if isinstance(item.get("content"), list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            if item["type"] == "message" and kind not in ("input_text", "output_text"):
                raise InvalidRequest(f"content parts of type {kind!r} are not supported (only text)",
                                     f"input.{i}.content.{j}.type")
