"""OpenAI wire format (the subset Kakeya honours). Unknown fields are ignored, as OpenAI does."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[str, list[TextPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None
    tool_call_id: Optional[str] = None

    def to_template(self) -> dict[str, Any]:
        """The dict a chat template expects: content as one string."""
        content = self.content if isinstance(self.content, str) or self.content is None else "".join(p.text for p in self.content)
        msg: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(self, key) is not None:
                msg[key] = getattr(self, key)
        return msg


class StreamOptions(_Lenient):
    include_usage: bool = False


class SpeculativeOptions(_Lenient):
    """Kakeya extension: per-request speculation control."""

    method: Optional[Literal["auto", "none", "ngram", "suffix", "draft"]] = None
    num_draft_tokens: Optional[int] = Field(default=None, ge=0)


class _SamplingFields(_Lenient):
    model: Optional[str] = None
    max_tokens: Optional[int] = None
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    speculative: Optional[SpeculativeOptions] = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: Optional[dict[str, float]] = None
    session_id: Optional[str] = Field(default=None, min_length=1, max_length=128)  # extension: keep KV between turns
    return_token_ids: bool = False  # extension (as vLLM): each choice carries its generated token ids
    ignore_eos: bool = False        # extension (as vLLM): generate max_tokens whatever the model says

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)

    @property
    def num_logprobs(self) -> Optional[int]:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[int]]
    echo: bool = False
    logprobs: Optional[int] = Field(default=None, ge=0, le=20)

    @property
    def num_logprobs(self) -> Optional[int]:
        return self.logprobs
