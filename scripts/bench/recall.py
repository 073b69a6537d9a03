"""What a sink + window KV costs in recall, and what it saves over a long session (issue 16).

1. Needle in a haystack: a random 5-digit number stated once ("The secret number is N.") at 10 %,
   50 % and 90 % of a filler text of 512 … 8k tokens (sentences drawn at random from word lists, so
   no repo text and no memorised passage), then asked for at the end; the answer is cued ("The
   secret number is") and read greedily. Full KV vs each window, same prompts.
2. A long session: ≥ 100 turns of one session (a short user message, a 16-token answer each),
   per-turn latency and the session's KV bytes, full vs windowed.

    python scripts/bench/recall.py                       # all of it (~25 min on 2 cores)
    python scripts/bench/recall.py --lengths 512,1024 --turns 20 --windows full,4:64   # a smoke run

Results: scripts/bench/results/recall.json, the tables and a plot in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, environment  # noqa: E402

from inference_engine.config import EngineConfig, ModelConfig  # noqa: E402
from inference_engine.engine.llm import LLM  # noqa: E402
from inference_engine.models import load_model  # noqa: E402
from inference_engine.tokenizer import apply_chat_template  # noqa: E402
from inference_engine.types import SamplingParams, SpeculativeParams  # noqa: E402

PLAIN = SpeculativeParams("none", 0)
SUBJECTS = ["The gardener", "A small boat", "The old clock", "My neighbour", "The river", "A tired courier", "The library",
            "An orange cat", "The train to the coast", "The baker", "A quiet student", "The wind", "The museum guard"]
VERBS = ["watched", "carried", "painted", "forgot", "followed", "repaired", "described", "ignored", "counted", "found"]
OBJECTS = ["the empty market", "a box of letters", "the northern hills", "seven blue chairs", "the morning fog",
           "a broken lantern", "the long corridor", "a basket of pears", "the evening news", "an unfinished map"]
ENDINGS = ["before noon", "without a word", "as it started to rain", "for the third time", "near the bridge",
           "after the festival", "while the bells rang", "in the spring", "with great care", "on a Tuesday"]


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}."


def needle_prompt(tok, length: int, depth: float, rng: random.Random) -> tuple[list[int], str]:
    """A chat prompt of about `length` tokens with the number at `depth`, ending in the cue."""
    number = str(rng.randrange(10000, 100000))
    question = "\n\nWhat is the secret number mentioned in the text above?"
    wrap = apply_chat_template(tok, [{"role": "user", "content": question}])
    cue = tok.encode("The secret number is", add_special_tokens=False)
    budget = length - len(wrap) - len(cue) - 12
    sentences, used = [], 0
    while used < budget:
        s = sentence(rng)
        sentences.append(s)
        used += len(tok.encode(" " + s, add_special_tokens=False))
    sentences.insert(int(depth * len(sentences)), f"The secret number is {number}.")
    text = " ".join(sentences) + question
    return apply_chat_template(tok, [{"role": "user", "content": text}]) + cue, number


def parse_window(w: str):
    return None if w == "full" else tuple(int(x) for x in w.split(":"))


def recall(llm: LLM, lengths, depths, windows, trials: int, seed: int) -> dict:
    tok, rows = llm.tokenizer, {}
    for length in lengths:
        for depth in depths:
            rng = random.Random(f"{seed}-{length}-{depth}")
            prompts = [needle_prompt(tok, length, depth, rng) for _ in range(trials)]
            for w in windows:
                hits, seconds = 0, 0.0
                for ids, number in prompts:
                    sp = SamplingParams(max_tokens=8, kv_window=parse_window(w) or (0, 0))
                    t0 = time.perf_counter()
                    out = llm.generate(ids, sp, PLAIN)
                    seconds += time.perf_counter() - t0
                    hits += number in out.text.replace(",", "")
                rows.setdefault(w, {}).setdefault(str(length), {})[str(depth)] = {
                    "hits": hits, "trials": trials, "prompt_tokens": len(prompts[0][0]), "seconds": round(seconds, 2)}
                print(f"recall length={length} depth={depth} {w}: {hits}/{trials} ({seconds:.1f} s)", flush=True)
    return rows


def long_session(llm: LLM, windows, turns: int, seed: int) -> dict:
    """One session per config: turn t sends a short user message and reads a 16-token answer."""
    tok, out = llm.tokenizer, {}
    for w in windows:
        rng = random.Random(seed)
        sid = f"long-{w}"
        llm.core.sessions.create(session_id=sid)
        history: list[int] = []
        per_turn = []
        for t in range(turns):
            msg = apply_chat_template(tok, [{"role": "user", "content": sentence(rng) + " What happened next?"}])
            history = history + msg
            sp = SamplingParams(max_tokens=16, ignore_eos=True, kv_window=parse_window(w) or (0, 0))
            t0 = time.perf_counter()
            res = llm.generate(history, sp, PLAIN, session_id=sid)
            dt = time.perf_counter() - t0
            history = history + list(res.token_ids)
            s = llm.core.sessions.get(sid)
            per_turn.append({"turn": t + 1, "seconds": round(dt, 4), "history": len(history), "kv_bytes": s.kv_bytes,
                             "cached": res.usage.cached_tokens})
        out[w] = per_turn
        print(f"session {w}: turn 1 {per_turn[0]['seconds']:.3f} s, turn {turns} {per_turn[-1]['seconds']:.3f} s, "
              f"kv {per_turn[-1]['kv_bytes'] / 1e6:.2f} MB", flush=True)
        llm.core.sessions.close(sid)
    return out


def markdown(res: dict) -> str:
    windows, lengths = list(res["recall"]), list(next(iter(res["recall"].values())))
    depths = list(next(iter(next(iter(res["recall"].values())).values())))
    head = "| KV | " + " | ".join(f"{n} tokens" for n in lengths) + " | all |"
    lines = [f"Needle recall, hits / trials summed over depths {', '.join(f'{float(d):.0%}' for d in depths)} "
             f"(SmolLM2-135M-Instruct, float32, greedy; `{res['command']}`):", "", head,
             "|" + "---|" * (len(lengths) + 2)]
    for w in windows:
        cells, tot, n = [], 0, 0
        for length in lengths:
            h = sum(res["recall"][w][length][d]["hits"] for d in depths)
            t = sum(res["recall"][w][length][d]["trials"] for d in depths)
            cells.append(f"{h}/{t}")
            tot, n = tot + h, n + t
        name = "full" if w == "full" else f"sink {w.split(':')[0]} + window {w.split(':')[1]}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {tot}/{n} |")
    lines += ["", "By depth (hits / trials, all lengths):", "", "| KV | " + " | ".join(f"{float(d):.0%}" for d in depths) + " |",
              "|" + "---|" * (len(depths) + 1)]
    for w in windows:
        cells = [f"{sum(res['recall'][w][n][d]['hits'] for n in lengths)}/{sum(res['recall'][w][n][d]['trials'] for n in lengths)}"
                 for d in depths]
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    s = res["session"]
    lines += ["", f"A {len(next(iter(s.values())))}-turn session (16 new tokens a turn): seconds per turn and the "
              "session's KV bytes", "", "| KV | turn 1 | turn 10 | turn 50 | last turn | last ÷ turn 10 | KV bytes at the end |",
              "|---|---|---|---|---|---|---|"]
    for w, turns in s.items():
        sec = [t["seconds"] for t in turns]
        lines.append(f"| {w} | {sec[0]:.3f} | {sec[9]:.3f} | {sec[min(49, len(sec) - 1)]:.3f} | {sec[-1]:.3f} | "
                     f"{sec[-1] / sec[9]:.2f} | {turns[-1]['kv_bytes']:,} |")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'); no plot"
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for w, turns in res["session"].items():
        a.plot([t["turn"] for t in turns], [t["seconds"] for t in turns], label=w)
        b.plot([t["turn"] for t in turns], [t["kv_bytes"] / 1e6 for t in turns], label=w)
    a.set_xlabel("turn"), a.set_ylabel("seconds per turn"), a.legend()
    b.set_xlabel("turn"), b.set_ylabel("session KV (MB)"), b.legend()
    fig.suptitle("SmolLM2-135M, one long session: full KV vs sink + window")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return f"wrote {path}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="512,1024,2048,4096,8192")
    ap.add_argument("--depths", default="0.1,0.5,0.9")
    ap.add_argument("--windows", default="full,4:64,4:256,4:1024")
    ap.add_argument("--trials", type=int, default=2, help="needles per (length, depth)")
    ap.add_argument("--turns", type=int, default=100)
    ap.add_argument("--session-windows", default="full,4:256")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "recall.json"))
    args = ap.parse_args()
    loaded = load_model(ModelConfig(device="cpu", dtype="float32"))
    llm = LLM(loaded, EngineConfig(prefix_cache=False, max_sessions=8))
    lengths = [int(x) for x in args.lengths.split(",") if int(x) <= llm.core.max_context]
    res = {"env": environment(), "command": "python scripts/bench/recall.py " + " ".join(sys.argv[1:]),
           "model": loaded.info.name, "max_context": llm.core.max_context}
    res["recall"] = recall(llm, lengths, [float(d) for d in args.depths.split(",")], args.windows.split(","),
                           args.trials, args.seed)
    res["session"] = long_session(llm, args.session_windows.split(","), args.turns, args.seed)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(markdown(res))
    print(plot(res, Path(__file__).parents[2] / "docs" / "recall.png"))


if __name__ == "__main__":
    main()
