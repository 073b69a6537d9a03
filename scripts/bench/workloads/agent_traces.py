"""Seeded multi-turn agent traces, as Responses API input items, from text the project never chose.

A coding agent's loop, scripted: the agent's tool calls and the tools' outputs are fixed by the seed,
the model writes every assistant answer (so the conversation is the model's own, and the same for
every configuration that is exact). Each trace works on one stdlib file (generated.excerpt) and
mixes the turn kinds agent loops are made of:

  read       the agent calls read_file; the output is a 25-40 line excerpt; the user asks about it
  edit       "rename NAME to NEW in that code and show the changed code" (the answer rewrites
             code that is in the context)
  failure    the agent calls run_tests; the JSON output quotes a line of the file and a name from it
             (tool output quoting earlier tool output); "quote the failing line and say why"
  reread     read_file on the same path again (the same excerpt), "show the first lines again"
  chat       a short question between tool turns ("in one sentence, what does this module do?")

Names to rename are identifiers read from the excerpt with `ast`-free regexes, so nothing is
imported. `python scripts/bench/workloads/agent_traces.py [n] [seed]` prints the traces.
"""
from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generated import excerpt, stdlib_name  # noqa: E402

TOOLS = [
    {"type": "function", "name": "read_file", "description": "Read a file of the repository",
     "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}},
    {"type": "function", "name": "run_tests", "description": "Run the tests of one file",
     "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}},
]
INSTRUCTIONS = "You are a coding agent. Use the tool results shown to you, quote code exactly, and be brief."
PLAN = ("read", "edit", "chat", "failure", "reread", "edit", "chat")  # the loop's shape, the same for every trace


def _call(rng: random.Random, name: str, args: dict, output: str) -> list[dict]:
    call_id = f"call_{rng.getrandbits(40):010x}"
    return [{"type": "function_call", "call_id": call_id, "name": name, "arguments": json.dumps(args)},
            {"type": "function_call_output", "call_id": call_id, "output": output}]


def _user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def _names(code: str) -> list[str]:
    """Identifiers defined or assigned in the excerpt, longest first (renaming them changes much)."""
    found = re.findall(r"^\s*(?:def|class)\s+([A-Za-z_]\w{3,})|^\s*([A-Za-z_]\w{3,})\s*=", code, flags=re.M)
    names = sorted({a or b for a, b in found}, key=lambda s: (-len(s), s))
    return names or ["self"]


def trace(rng: random.Random) -> dict:
    """One trace: {"source", "turns": [{"kind", "input": [items]}]}."""
    path, line, code = excerpt(rng, 25, 40)
    name, lines = stdlib_name(path), code.splitlines()
    names = _names(code)
    turns = []
    for kind in PLAN:
        if kind == "read":
            items = _call(rng, "read_file", {"path": name}, code) + [_user(f"What does the code in {name} do?")]
        elif kind == "edit":
            old = rng.choice(names[:4])
            new = old + rng.choice(["_v2", "_new", "_impl", "_fixed"])
            items = [_user(f"Rename `{old}` to `{new}` in that code and show the changed code.")]
        elif kind == "failure":
            bad = rng.choice([s for s in lines if s.strip()] or lines)
            report = {"path": name, "failed": 1, "passed": rng.randint(3, 40),
                      "failures": [{"test": f"test_{rng.choice(names[:4]).lower()}", "line": line + lines.index(bad),
                                    "source": bad.strip(), "error": "AssertionError"}]}
            items = _call(rng, "run_tests", {"path": name}, json.dumps(report, indent=2)) + \
                [_user("Quote the failing line exactly and say why it might fail.")]
        elif kind == "reread":
            items = _call(rng, "read_file", {"path": name}, code) + [_user("Show the first ten lines of that file again.")]
        else:
            items = [_user(rng.choice(["Thanks. In one sentence, what does this module do?",
                                       "Is there anything risky in it? One sentence.",
                                       "Which function would you test first, and why? Be brief."]))]
        turns.append({"kind": kind, "input": items})
    return {"source": f"{name}:{line}", "lines": len(lines), "turns": turns}


def generate(n: int, seed: int) -> list[dict]:
    rng = random.Random(f"{seed}/agent")
    return [trace(rng) for _ in range(n)]


if __name__ == "__main__":
    n, seed = (int(a) for a in (sys.argv[1:3] + ["1", "1234"][len(sys.argv[1:3]):]))
    print(json.dumps(generate(n, seed), indent=1))
