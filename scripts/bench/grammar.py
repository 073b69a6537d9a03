"""What structured output costs: the grammar mask per verify row, and end-to-end tok/s with a
JSON-schema grammar against the same requests without one, side by side in one run.

SmolLM2-135M-Instruct (the default model), greedy, prompts that ask for JSON; each request runs
plain and with `auto` speculation, with and without the grammar, alternating. The mask cost is
the wall time inside `Grammar.mask` (all rows of a step) ÷ rows masked.

    .venv/bin/python scripts/bench/grammar.py [--max-tokens 128] [--repeats 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, write_result  # noqa: E402

from inference_engine.config import EngineConfig, ModelConfig  # noqa: E402
from inference_engine.engine import grammar as grammar_module  # noqa: E402
from inference_engine.engine.llm import LLM  # noqa: E402
from inference_engine.http.schemas import ResponseFormat  # noqa: E402
from inference_engine.models import load_model  # noqa: E402
from inference_engine.tokenizer import apply_chat_template  # noqa: E402
from inference_engine.types import SamplingParams, SpeculativeParams  # noqa: E402

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "color", "age", "toys"], "properties": {
    "name": {"type": "string"}, "color": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 40},
    "toys": {"type": "array", "items": {"type": "string"}, "maxItems": 4}}}
PROMPTS = [
    "Give me a JSON object describing a cat: its name, color, age and a list of toys.",
    "Invent a pet dog and describe it as JSON with name, color, age and toys.",
    "Return JSON for a goldfish called Bubbles: name, color, age, toys.",
]


class MaskTimer:
    """Wraps Grammar.mask to total its time and the rows it masked."""

    def __init__(self):
        self.seconds, self.rows, self._orig = 0.0, 0, grammar_module.Grammar.mask
        timer = self

        def timed(g, logits, drafts):
            t0 = time.perf_counter()
            timer._orig(g, logits, drafts)
            timer.seconds += time.perf_counter() - t0
            timer.rows += len(drafts) + 1

        grammar_module.Grammar.mask = timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    loaded = load_model(ModelConfig(device="cpu", dtype="float32"))
    llm = LLM(loaded, EngineConfig(prefix_cache=False))
    grammar = ResponseFormat.model_validate({"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA}}).grammar()
    timer = MaskTimer()
    llm.core.grammars.prepare(grammar)  # as the HTTP edge does, in a worker thread before admission: untimed
    columns = {(m, g): [] for m in ("none", "auto") for g in (False, True)}
    outputs, constrained_s = {}, 0.0
    for rep in range(args.repeats + 1):  # round 0 warms up
        if rep == 1:
            timer.seconds, timer.rows = 0.0, 0
        for p in PROMPTS:
            ids = apply_chat_template(loaded.tokenizer, [{"role": "user", "content": p}])
            for (method, constrained), samples in columns.items():
                sp = SamplingParams(max_tokens=args.max_tokens, grammar=grammar if constrained else None)
                t0 = time.perf_counter()
                r = llm.generate(ids, sp, SpeculativeParams(method, 8 if method == "auto" else 0))
                if rep:
                    samples.append(len(r.token_ids) / (time.perf_counter() - t0))
                    constrained_s += (time.perf_counter() - t0) if constrained else 0.0
                outputs[(p, method, constrained)] = r.text
    rows = []
    for (method, constrained), samples in columns.items():
        rows.append({"method": method, "grammar": constrained, "tok_s": statistics.median(samples)})
    base = {r["method"]: r["tok_s"] for r in rows if not r["grammar"]}
    for r in rows:
        r["ratio_vs_unconstrained"] = r["tok_s"] / base[r["method"]]
    res = {"env": environment(), "rows": rows, "mask_rows": timer.rows,
           "mask_us_per_row": 1e6 * timer.seconds / max(timer.rows, 1),
           "mask_share_of_constrained_time": timer.seconds / max(constrained_s, 1e-9),
           "same_greedy_text_spec_vs_plain_under_grammar": all(
               outputs[(p, "auto", True)] == outputs[(p, "none", True)] for p in PROMPTS),
           "sample_outputs": {p: outputs[(p, "none", True)] for p in PROMPTS}}
    path = write_result("grammar", res)
    print("| method | grammar | tok/s | ratio vs no grammar |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {'json_schema' if r['grammar'] else 'none'} | {r['tok_s']:.1f} | {r['ratio_vs_unconstrained']:.2f} |")
    print(f"\nmask: {res['mask_us_per_row']:.0f} µs per verify row over {timer.rows} rows, "
          f"{100 * res['mask_share_of_constrained_time']:.1f} % of the constrained requests' time; spec == plain under the "
          f"grammar: {res['same_greedy_text_spec_vs_plain_under_grammar']}\nwrote {path}")


if __name__ == "__main__":
    main()
