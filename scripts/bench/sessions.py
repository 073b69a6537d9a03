"""Multi-turn prefill: time to first token of turn N ÷ turn 1, with sessions vs without.

A 20-turn chat on SmolLM2-135M-Instruct (float32, CPU) growing to ~4k tokens. Each turn sends
the whole conversation (OpenAI style) through the chat template. Arm `session`: the request names
a session, so the server keeps the KV cache and prefills only the tokens after the longest prefix
it shares with the cached history. Arm `stateless`: no session and no prefix cache, so every turn
prefills the whole conversation. Both arms see identical prompts (the assistant turns are the ones
the session arm generated). The arms alternate turn by turn so VM drift hits both.

TTFT = time from submitting the request to the first generated token (prefill + one step), measured
inside the engine (no HTTP). Greedy, plain decoding (speculation off) so only prefill differs.

    .venv/bin/python scripts/bench/sessions.py --turns 20 --answer-tokens 48
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, write_result  # noqa: E402

from inference_engine.config import EngineConfig, ModelConfig  # noqa: E402
from inference_engine.engine.llm import LLM  # noqa: E402
from inference_engine.models import load_model  # noqa: E402
from inference_engine.tokenizer import apply_chat_template  # noqa: E402
from inference_engine.types import SamplingParams, SpeculativeParams  # noqa: E402

PASSAGE = (Path(__file__).parent / "workloads" / "passage.txt").read_text().split()
PLAIN = SpeculativeParams("none", 0)


def user_message(turn: int, words: int) -> str:
    start = (turn * words) % max(1, len(PASSAGE) - words)
    return f"Turn {turn + 1}. Here is more of the report:\n" + " ".join(PASSAGE[start : start + words]) + \
        "\nWhat is the key point of this part, in one sentence?"


def timed(llm: LLM, prompt: list[int], max_tokens: int, session_id=None) -> tuple[float, list[int], int]:
    t0, first = time.perf_counter(), []

    def on_token(_tok: int) -> None:
        if not first:
            first.append(time.perf_counter())

    out = llm.generate(prompt, SamplingParams(max_tokens=max_tokens), PLAIN, on_token, session_id=session_id)
    return first[0] - t0, out.token_ids, out.usage.cached_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--user-words", type=int, default=110)
    ap.add_argument("--answer-tokens", type=int, default=48)
    args = ap.parse_args()
    loaded = load_model(ModelConfig(device="cpu", dtype="float32"))
    with_sessions = LLM(loaded, EngineConfig(prefix_cache=True))
    stateless = LLM(loaded, EngineConfig(prefix_cache=False))
    sid = with_sessions.core.sessions.create().session_id
    tok, messages, rows = loaded.tokenizer, [], []
    timed(stateless, apply_chat_template(tok, [{"role": "user", "content": "warm up"}]), 2)  # first-call overheads
    for turn in range(args.turns):
        messages.append({"role": "user", "content": user_message(turn, args.user_words)})
        prompt = apply_chat_template(tok, messages)
        ttft_s, answer, cached = timed(with_sessions, prompt, args.answer_tokens, sid)
        ttft_0, _, _ = timed(stateless, prompt, 1)  # only the first token matters here
        messages.append({"role": "assistant", "content": tok.decode(answer, skip_special_tokens=True)})
        rows.append({"turn": turn + 1, "prompt_tokens": len(prompt), "cached_tokens": cached,
                     "ttft_session_s": round(ttft_s, 4), "ttft_stateless_s": round(ttft_0, 4)})
        print(rows[-1], flush=True)
    first, last = rows[0], rows[-1]
    result = {
        "benchmark": "sessions", "model": loaded.info.name, "env": environment(), "args": vars(args),
        "command": "python scripts/bench/sessions.py " + " ".join(sys.argv[1:]),
        "ratio_last_over_first_session": round(last["ttft_session_s"] / first["ttft_session_s"], 3),
        "ratio_last_over_first_stateless": round(last["ttft_stateless_s"] / first["ttft_stateless_s"], 3),
        "turns": rows,
    }
    print({k: v for k, v in result.items() if k.startswith("ratio")})
    print("wrote", write_result("sessions", result))


if __name__ == "__main__":
    main()
