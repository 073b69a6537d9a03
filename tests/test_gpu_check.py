"""scripts/gpu_check.sh's driver in its CPU smoke mode: the checks it makes on a GPU run here on
the CPU (where the default path has no CUDA graphs; tests/test_fast_path.py covers the static
step they replay), and its result renders into the benchmarks page's table."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))


def test_gpu_check_smoke_on_cpu(tmp_path):
    out = tmp_path / "smoke"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(ROOT / "scripts/bench/gpu_check.py"), "--device", "cpu", "--quick",
                          "--out", str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    res = json.loads(out.with_suffix(".json").read_text())
    names = {c["check"] for c in res["checks"]}
    assert all(c["ok"] for c in res["checks"]) and {"ngram == plain (float32)", "batched == alone (float32)"} <= names
    ngram = next(c for c in res["checks"] if c["check"].startswith("ngram"))
    drafted, accepted = (int(w) for w in re.findall(r"\d+", ngram["detail"]))
    assert 0 < accepted < drafted  # ngram drafts were both accepted and rejected
    rows = res["speed"]["rows"]
    assert [r["batch"] for r in rows] == [1, 2] and all(r["kakeya_tok_s"] > 0 for r in rows)
    curve = res["speed"]["verify_cost"]["qwen3-micro"]
    assert len(curve) == 17 and curve[0] == 1.0 and curve == sorted(curve)

    import gpu_check

    page = gpu_check.markdown(res)
    assert "| batched == alone (float32) | pass" in page and "| qwen3-micro | bfloat16 | 2 |" in page
