"""llama.cpp peer for the benchmarks: runs inside the llama-cpp-python venv (install_llama_cpp.sh).

Reads one JSON request per line on stdin, answers one JSON line on stdout:
  {"ids": [...], "max_tokens": N, "stop": [...], "lookup": bool, "fresh": bool} → {"ids": [...], "seconds": s}
Greedy (temp 0, top_k 1), PEER_THREADS threads (2); `lookup` uses its prompt-lookup decoding
(LlamaPromptLookupDecoding, num_pred_tokens=10). The prompt's KV is reused across calls
where prefixes match, as llama-cpp-python does by itself. Seconds are measured here, so the
pipe costs nothing.

    $VENV/bin/python llama_cpp_peer.py MODEL.gguf
"""
import json
import os
import sys
import time

from llama_cpp import Llama
from llama_cpp.llama_speculative import LlamaPromptLookupDecoding


def main() -> None:
    path = sys.argv[1]
    threads = int(os.environ.get("PEER_THREADS", "2"))
    common = dict(model_path=path, n_ctx=8192, n_threads=threads, n_threads_batch=threads, verbose=False)
    # with a draft model llama-cpp-python needs every position's logits, but sizes its score
    # buffer by logits_all alone (a prompt over n_batch tokens then fails): ask for them explicitly
    engines = {False: Llama(**common)}  # the lookup engine only when asked: its RSS is not plain llama.cpp's
    print(json.dumps({"ready": True, "llama_cpp_python": __import__("llama_cpp").__version__}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        lookup = bool(req.get("lookup"))
        if lookup not in engines:
            engines[lookup] = Llama(**common, logits_all=True, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10))
        llm, stop, out = engines[lookup], set(req.get("stop", ())), []
        if req.get("fresh"):
            llm.reset()  # forget the cached prompt: a cold prefill
        t0 = time.perf_counter()
        for tok in llm.generate(req["ids"], top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(tok))
            if tok in stop or len(out) >= req["max_tokens"]:
                break
        print(json.dumps({"ids": out, "seconds": time.perf_counter() - t0}), flush=True)


if __name__ == "__main__":
    main()
