"""Anthropic Messages wire format (the subset Kakeya honours). Content kinds and fields Kakeya does
not implement are refused by name; other unknown fields are ignored and logged, as on chat."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...errors import InvalidRequest
from ..schemas import KVWindowOptions, Screened, SpeculativeOptions

BLOCKS = ("text", "tool_use", "tool_result", "thinking")
# request fields that would change the answer and are not implemented: a 400 naming them
UNSUPPORTED = {"container": "code-execution containers", "mcp_servers": "MCP servers",
               "output_format": "the beta name: send output_config.format"}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextBlock(_Lenient):
    type: Literal["text"]
    text: str


class ToolUseBlock(_Lenient):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Lenient):
    type: Literal["tool_result"]
    tool_use_id: str
    content: Union[str, list[TextBlock]] = ""
    is_error: bool = False


class ThinkingBlock(_Lenient):
    type: Literal["thinking"]
    thinking: str
    signature: Optional[str] = None


Block = Annotated[Union[TextBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock], Field(discriminator="type")]


class InputMessage(_Lenient):
    role: Literal["user", "assistant"]
    content: Union[str, list[Block]]


class Tool(_Lenient):
    type: Optional[Literal["custom"]] = None  # server tools (web_search_…, bash_…) are refused by name
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: Optional[str] = None
    input_schema: dict[str, Any]


class ToolChoice(_Lenient):
    type: Literal["auto", "any", "tool", "none"]
    name: Optional[str] = None
    disable_parallel_tool_use: Optional[bool] = None  # unset: a forced call is one call (docs/api.md)


class ThinkingConfig(_Lenient):
    type: Literal["enabled", "adaptive", "disabled"]  # adaptive: the model decides (Qwen3 thinking on)
    budget_tokens: Optional[int] = Field(default=None, ge=1)


class JsonOutputFormat(_Lenient):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Lenient):
    effort: Optional[Literal["low", "medium", "high", "xhigh", "max"]] = None  # a hint; nothing to scale here
    format: Optional[JsonOutputFormat] = None  # structured output: the grammar path, as chat's json_schema


class Metadata(_Lenient):
    user_id: Optional[str] = Field(default=None, max_length=256)


class CountTokensRequest(Screened):
    model: str
    messages: list[InputMessage] = Field(min_length=1)
    system: Optional[Union[str, list[TextBlock]]] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[ToolChoice] = None
    thinking: Optional[ThinkingConfig] = None

    @classmethod
    def _refuse(cls, data: dict) -> None:
        _refuse_unsupported(data)

    @model_validator(mode="after")
    def _tool_named(self) -> "CountTokensRequest":
        choice = self.tool_choice
        if choice is not None and choice.type != "none" and not self.tools:
            raise InvalidRequest(f"tool_choice {choice.type!r} needs tools", "tool_choice")
        if choice is not None and choice.type == "tool":
            names = [t.name for t in self.tools]
            if choice.name not in names:
                raise InvalidRequest(f"tool_choice names tool {choice.name!r}, which is not among tools "
                                     f"({', '.join(names)})", "tool_choice.name")
        return self


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: Optional[list[str]] = None
    stream: bool = False
    temperature: Optional[float] = Field(default=None, ge=0.0, le=1.0)  # Anthropic's range; None: the server's
    top_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0)
    metadata: Optional[Metadata] = None
    output_config: Optional[OutputConfig] = None
    service_tier: Optional[str] = None  # accepted; one tier here
    # Kakeya extensions, as on chat completions
    speculative: Optional[SpeculativeOptions] = None
    kv_window: Optional[KVWindowOptions] = None
    session_id: Optional[str] = Field(default=None, min_length=1, max_length=128)


def _refuse_unsupported(data: dict) -> None:
    for name, what in UNSUPPORTED.items():
        if name in data:
            raise InvalidRequest(f"{name} is not supported by this server ({what})", name)
    for i, tool in enumerate(data.get("tools") or ()):
        if isinstance(tool, dict) and tool.get("type") not in (None, "custom"):
            raise InvalidRequest(f"server tool {tool.get('type')!r} is not supported: only client tools with "
                                 "input_schema", f"tools.{i}.type")
    for i, m in enumerate(data.get("messages") or ()):
        content = m.get("content") if isinstance(m, dict) else None
        for j, b in enumerate(content if isinstance(content, list) else ()):
            kind = b.get("type") if isinstance(b, dict) else None
            if isinstance(kind, str) and kind not in BLOCKS:
                raise InvalidRequest(f"content blocks of type {kind!r} are not supported (only "
                                     f"{', '.join(BLOCKS)})", f"messages.{i}.content.{j}.type")
