"""The hostile-input table: what every request body and session id is screened for before
anything else reads it. Each rule refuses with a 400 naming the field (the OpenAI envelope),
and nothing reaches the tokenizer, the chat template or the engine. One row each is tested in
tests/test_hostile_input.py; docs/api.md lists them.

JSON allows what Python's parser accepts and our code cannot use: NaN and ±Infinity (Python's
json module reads them), numbers no kernel can hold, strings that are not valid UTF-8 (a lone
surrogate `\\ud800` is valid JSON escaping but no tokenizer can encode it), and nesting deep
enough to exhaust the recursion of whatever walks it later (validation, templates, grammars).
"""
from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import InvalidRequest

MAX_DEPTH = 32          # JSON nesting (OpenAI's structured-output schemas allow 10 levels of objects)
MAX_INT = 2**63 - 1     # the largest integer a field may hold (int64: torch, protobuf)
SESSION_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    refuses: str


RULES = (
    Rule("depth", f"JSON nested deeper than {MAX_DEPTH} levels (objects and arrays)"),
    Rule("utf8", "a string that is not valid UTF-8, e.g. a lone surrogate `\\ud800`"),
    Rule("finite", "a number that is NaN, ±Infinity or subnormal (|x| < 2.2e-308, e.g. 1e-310)"),
    Rule("int_range", f"an integer outside ±{MAX_INT} (int64)"),
    Rule("session_id", "a session id that is empty, longer than 128 characters or not [A-Za-z0-9._:-]"),
    Rule("body", "a body larger than --max-body-bytes, whether declared (Content-Length) or streamed (chunked)"),
)


def screen(body: Any) -> None:
    """Raise InvalidRequest (param: the path of the offending field) for the first value of a
    parsed JSON body that breaks a rule. Iterative, so any depth is refused without recursing."""
    stack: list[tuple[Any, str, int]] = [(body, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise InvalidRequest(f"{path or 'body'}: nested deeper than {MAX_DEPTH} levels", path or None)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                name = _printable(key) if isinstance(key, str) else str(key)
                if isinstance(key, str):
                    _check_string(key, f"{path}.{name}" if path else name)
                stack.append((item, f"{path}.{name}" if path else name, depth + 1))
        elif isinstance(value, str):
            _check_string(value, path)
        elif isinstance(value, float):
            if not math.isfinite(value) or (value != 0.0 and abs(value) < sys.float_info.min):
                raise InvalidRequest(f"{path}: {value!r} is not a finite, normal number", path)
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise InvalidRequest(f"{path}: integer out of range (|x| ≤ {MAX_INT})", path)


def _printable(key: str) -> str:
    """A key as it can appear in an error: lone surrogates written as `\\udXXX` escapes."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_string(s: str, path: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest(f"{path or 'body'}: not valid UTF-8 text (character {e.start} is a lone surrogate)",
                             path or None) from None


def session_id(value: Optional[str], param: str) -> Optional[str]:
    """A client-named session id, checked (None stays None: no session)."""
    if value is not None and not SESSION_ID.fullmatch(value):
        raise InvalidRequest(f"{param} must be 1-128 characters of A-Z a-z 0-9 . _ : - (got {len(value)} characters)",
                             param)
    return value
