"""The text edge: chat templates → token ids, eos resolution, streaming detokenization, stop strings.

The engine speaks token ids only; everything about text lives here (and in http/).
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from transformers import PreTrainedTokenizerBase

# End-of-turn tokens of ChatML-style models (Qwen, SmolLM2) that a config's eos may omit.
_EXTRA_EOS = ("<|im_end|>", "<|endoftext|>")


def apply_chat_template(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, Any]],
    tools: Optional[Sequence[dict[str, Any]]] = None,
    enable_thinking: Optional[bool] = None,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Render messages with the model's own chat template and return the prompt's token ids."""
    kwargs: dict[str, Any] = {}
    if enable_thinking is not None:
        kwargs["enable_thinking"] = enable_thinking
    out = tokenizer.apply_chat_template(
        list(messages), tools=list(tools) if tools else None, add_generation_prompt=add_generation_prompt,
        tokenize=True, **kwargs,
    )
    # transformers 5 returns a BatchEncoding by default; 4.x returned a plain list
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return list(ids)


def resolve_eos_ids(tokenizer: PreTrainedTokenizerBase, config: Any = None, generation_config: Any = None) -> list[int]:
    """Every id that ends a generation: config eos, generation-config eos, the tokenizer's eos and the
    ChatML end tokens the vocabulary has. Deduplicated, first-seen order."""
    found: list[int] = []

    def add(value: Any) -> None:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v >= 0 and v not in found:
                found.append(v)

    for cfg in (config, generation_config):
        add(getattr(cfg, "eos_token_id", None))
    add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for tok in _EXTRA_EOS:
        if tok in vocab:
            add(vocab[tok])
    return found


def decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """The one decode rule used everywhere, so streamed deltas and full text agree."""
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


class StreamingDetokenizer:
    """Incremental decode: each push returns the new text. Deltas concatenate to exactly
    decode(all ids); a partial UTF-8 sequence (shown as U+FFFD) is held back until complete.

    Decoding only a short window (prefix_offset..) keeps this O(1) per token, as in vLLM/TGI.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # window start: context so the tokenizer joins pieces right
        self.read_offset = 0    # ids before this were already turned into emitted text
        self.text = ""          # everything emitted so far

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = decode(self.tokenizer, self.ids[self.prefix_offset : self.read_offset])
        full = decode(self.tokenizer, self.ids[self.prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""  # nothing new yet (special token, or an incomplete character)
        delta = full[len(prefix) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """At the end: whatever is still held back (e.g. a truncated character), so text == decode(ids)."""
        rest = decode(self.tokenizer, self.ids)[len(self.text) :]
        self.text += rest
        return rest


class StopMatcher:
    """Stop strings for a stream of text deltas. Text that could still be the start of a stop
    string is held back, so no part of a stop string ever reaches the client."""

    def __init__(self, stops: Iterable[str]):
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False
        self.matched: Optional[str] = None  # the stop string that ended the text

    def push(self, delta: str) -> str:
        """Returns the text that is safe to emit now; sets `stopped` when a stop string appears."""
        if self.stopped:
            return ""
        buf = self.held + delta
        # the first stop string to be completed wins (of those one character completes, the longest),
        # so the answer does not depend on how the text was cut into deltas
        hits = [(i + len(s), i, s) for s in self.stops if (i := buf.find(s)) >= 0]
        if hits:
            _, start, self.matched = min(hits)
            self.stopped, self.held = True, ""
            return buf[:start]
        keep = max((n for s in self.stops for n in range(min(len(s) - 1, len(buf)), 0, -1) if s.startswith(buf[-n:])), default=0)
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """At the end of a stream that did not stop: release the held text."""
        out, self.held = ("" if self.stopped else self.held), ""
        return out
