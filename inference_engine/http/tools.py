"""Tool calling that works with any model, and `tool_choice` that is enforced.

One calling convention everywhere: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
(Qwen3's and Hermes'), which parsers.OutputParser turns into OpenAI `tool_calls`.

- A chat template that renders tools (Qwen3) gets them as `tools=`; one that ignores them
  (SmolLM2: the same prompt with or without) gets them in a system message that states the
  convention, as llama.cpp's "generic" tool format does, and assistant `tool_calls` in history
  are written back in the same convention.
- `tool_choice: "required"` or a named function becomes an llguidance grammar: one call (or,
  with `parallel_tool_calls: true`, several) whose JSON names an allowed function and whose arguments
  match its `parameters` schema. The engine then enforces it losslessly (engine/grammar.py).
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Optional, Sequence

import llguidance

from ..tokenizer import apply_chat_template

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_PROBE_TOOL = {"type": "function", "function": {"name": "probe_tool_zq", "description": "probe", "parameters": {}}}


def renders_tools(tokenizer) -> bool:
    """Whether the model's chat template puts `tools` into the prompt (checked once per tokenizer)."""
    return _renders(id(tokenizer), tokenizer)


@lru_cache(maxsize=16)
def _renders(_key: int, tokenizer) -> bool:
    msgs = [{"role": "user", "content": "hi"}]
    try:
        with_tool = apply_chat_template(tokenizer, msgs, tools=[_PROBE_TOOL])
    except Exception:  # noqa: BLE001 - a template that chokes on tools does not render them
        return False
    return with_tool != apply_chat_template(tokenizer, msgs)


def system_prompt(tools: Sequence[dict[str, Any]]) -> str:
    listed = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    return ("You can call functions. They are listed here, one JSON object per line:\n<tools>\n" + listed +
            "\n</tools>\nTo call one, answer with exactly\n" + OPEN +
            '\n{"name": <function name>, "arguments": <JSON object of arguments>}\n' + CLOSE +
            "\nand nothing else. Otherwise answer the user directly.")


def inject(messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template without tool support: the tool list and convention in the system
    message, assistant tool calls as text in that convention, tool results as user turns."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.get("tool_calls"):
            calls = "\n".join(f"{OPEN}\n" + json.dumps({"name": c["function"]["name"],
                                                         "arguments": json.loads(c["function"]["arguments"])},
                                                        ensure_ascii=False) + f"\n{CLOSE}" for c in m["tool_calls"])
            m = {"role": "assistant", "content": ((m.get("content") or "") + "\n" + calls).strip()}
        elif m["role"] == "tool":
            m = {"role": "user", "content": f"Result of the function call: {m['content']}"}
        out.append(m)
    if out and out[0]["role"] == "system":
        out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + system_prompt(tools)}
    else:
        out.insert(0, {"role": "system", "content": system_prompt(tools)})
    return out


def grammar(tokenizer, tools: Sequence[dict[str, Any]], choice: Any, parallel: bool) -> Optional[str]:
    """The grammar that forces a call, for tool_choice `required` (several with parallel_tool_calls)
    or a named function (exactly one call); None otherwise."""
    if choice == "required":
        allowed = list(tools)
    elif isinstance(choice, str) or choice is None:
        return None
    else:
        allowed = [t for t in tools if t["function"]["name"] == choice.function.name]
    call = {"anyOf": [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                       "properties": {"name": {"const": t["function"]["name"]},
                                      "arguments": closed(t["function"].get("parameters") or {"type": "object"})}}
                      for t in allowed],
            # no free whitespace (a model free to pad may never stop), in json.dumps' own style
            "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}
    # a tag that is one token in this vocabulary (Qwen3's added tokens) is written as a token in
    # the grammar; elsewhere (SmolLM2) it is plain text
    open_, close = (_tag(tokenizer, t) for t in (OPEN, CLOSE))
    repeat = ' ("\\n" call)*' if parallel and choice == "required" else ""  # a named function: one call
    # the output may end after any complete call, and after the line break models write after one
    # (as llama.cpp's tool grammars allow trailing space)
    lark = (f'start: call{repeat} "\\n"?\n'
            f'call: {open_} "\\n" body "\\n" {close}\n'
            f"body: %json {json.dumps(call, ensure_ascii=False)}\n")
    return llguidance.LLMatcher.grammar_from_lark(lark)


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMAS = ("items", "prefixItems", "additionalProperties", "anyOf", "oneOf", "allOf", "not", "if", "then", "else",
               "contains", "propertyNames", "unevaluatedProperties", "unevaluatedItems")


def closed(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists its properties and
    says nothing about others (as llama.cpp's and xgrammar's strict mode read tool schemas): a
    model free to invent extra arguments may write one that never ends."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k in _SCHEMA_MAPS and isinstance(v, dict):  # name → schema
            out[k] = {name: closed(sub) for name, sub in v.items()}
        elif k in _SUBSCHEMAS:
            out[k] = closed(v)
        else:
            out[k] = v
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def _tag(tokenizer, tag: str) -> str:
    ids = tokenizer.encode(tag, add_special_tokens=False)
    return tag if len(ids) == 1 and tag in tokenizer.get_added_vocab() else json.dumps(tag)
