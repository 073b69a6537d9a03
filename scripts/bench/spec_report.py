"""What spec.py reports: prompt overlap, per-request ratio distributions, tables and target checks.

Pure functions over the rows spec.py measured; nothing here runs a model or reads a clock.
rows[mode][workload][column] is one column over one workload: tokens, seconds, tok_s, ratio,
acceptance, mismatches and `requests` (one record per request, in order).
"""
from __future__ import annotations

COPY_HEAVY = ("gen_copy", "gen_quote")  # the generated kinds whose task is a verbatim copy of the prompt
OPEN_ENDED = ("chat", "gen_open")       # little of the answer is in the prompt: drafting must cost nothing
PLAIN, HF_LOOKUP, LLAMA_PLAIN = "none", "hf-lookup", "llama.cpp"
PEERS = ("hf", HF_LOOKUP, LLAMA_PLAIN, "llama.cpp-lookup")  # not our proposers: never the "best fixed" one


def lcs(a: list[int], b: list[int]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def copied(out: list[int], src: list[int], n: int = 8) -> float:
    grams = {tuple(src[i:i + n]) for i in range(len(src) - n + 1)}
    hit = [False] * len(out)
    for i in range(len(out) - n + 1):
        if tuple(out[i:i + n]) in grams:
            hit[i:i + n] = [True] * n
    return sum(hit) / len(out) if out else 0.0


def quantile(xs: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default), so p50 of [a, b] is their mean."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (pos - lo)


def distribution(xs: list[float]) -> dict | None:
    if not xs:
        return None
    return {"n": len(xs), "mean": sum(xs) / len(xs), "min": min(xs), "p25": quantile(xs, 0.25),
            "median": quantile(xs, 0.5), "p75": quantile(xs, 0.75), "max": max(xs)}


def request_ratios(run: dict, plain: dict) -> list[float]:
    """tok/s of each request ÷ tok/s of the same request in the plain column of the same mode."""
    return [r["tok_s"] / p["tok_s"] for r, p in zip(run["requests"], plain["requests"]) if p["tok_s"]]


def add_distributions(rows: dict, names: list[str], ref: str) -> None:
    for n in names:
        for run in rows[n].values():
            run["ratio_distribution"] = distribution(request_ratios(run, rows[n][ref]))


def table(workloads: list[str], columns: list[str], rows: dict) -> str:
    """tok/s (ratio vs plain of this mode; acceptance, tokens per verify step) per workload and column."""
    lines = ["| workload | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for wl in workloads + ["all"]:
        cells = []
        for c in columns:
            r = rows[wl][c]
            cell = f"{r['tok_s']:.1f} ({r['ratio']:.2f}x)"
            if r.get("acceptance_rate") is not None and c != PLAIN:
                cell += f" acc {r['acceptance_rate']:.2f}, {r['mean_accepted_length']:.2f} tok/step"
            if r.get("mismatches"):
                cell += f" MISMATCH {len(r['mismatches'])}"
            cells.append(cell)
        lines.append(f"| {wl} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def distribution_table(workloads: list[str], columns: list[str], rows: dict) -> str:
    """Per-request tok/s ratio vs plain: min / p25 / median / p75 / max (n requests)."""
    cols = [c for c in columns if c != PLAIN]
    lines = ["| workload (n) | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for wl in workloads:
        d0 = rows[wl][cols[0]].get("ratio_distribution") if cols else None
        cells = []
        for c in cols:
            d = rows[wl][c].get("ratio_distribution")
            cells.append("" if d is None else f"{d['min']:.2f} / {d['p25']:.2f} / {d['median']:.2f} / {d['p75']:.2f} / {d['max']:.2f}")
        lines.append(f"| {wl} ({d0['n'] if d0 else 0}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pooled(rows: dict, names: list[str], column: str) -> float | None:
    """tok/s of one column over several workloads together (tokens ÷ seconds, not a mean of rates)."""
    runs = [rows[n][column] for n in names if column in rows.get(n, {})]
    seconds = sum(r["seconds"] for r in runs)
    return sum(r["tokens"] for r in runs) / seconds if runs and seconds else None


def _line(ok: bool | None, text: str) -> dict:
    return {"pass": ok, "text": f"{'PASS' if ok else 'n/a ' if ok is None else 'FAIL'}  {text}"}


def _pooled_requests(rows: dict, picks: list[tuple[str, int]], column: str) -> float:
    reqs = [rows[n][column]["requests"][i] for n, i in picks]
    return sum(r["tokens"] for r in reqs) / sum(r["seconds"] for r in reqs)


def measured_copy(modes: dict, overlaps: dict, threshold: float = 0.7) -> list[dict]:
    """Informational: the requests whose *plain* output copies ≥ threshold of its tokens from the
    prompt, whatever their workload label (the 135M model often does not copy when asked to)."""
    picks = [(n, i) for n, ovs in overlaps.items() for i, o in enumerate(ovs) if o["copied"] >= threshold]
    out = []
    for mode, rows in modes.items():
        cols = list(rows["all"])
        if not picks or "auto" not in cols or PLAIN not in cols:
            continue
        auto = _pooled_requests(rows, picks, "auto")
        parts = [f"{auto / _pooled_requests(rows, picks, c):.2f}× {c}" for c in cols if c != "auto"]
        out.append(_line(None, f"{mode} requests whose plain output copies ≥ {threshold:.0%} of the prompt "
                               f"({len(picks)}): auto = " + ", ".join(parts)))
    return out


def targets(modes: dict, names: list[str], weight_format: str, float32: bool, overlaps: dict | None = None) -> list[dict]:
    """The issue-12 targets, each computed from this run's rows; n/a where a column is missing."""
    out = []
    for mode, rows in modes.items():
        cols = list(rows["all"])
        fixed = [c for c in cols if c not in (PLAIN, "auto", *PEERS)]
        if "auto" in cols and fixed:
            for n in names:
                best = max(fixed, key=lambda c: rows[n][c]["tok_s"])
                ratio = rows[n]["auto"]["tok_s"] / rows[n][best]["tok_s"]
                out.append(_line(ratio >= 0.9, f"{mode} {n}: auto ≥ 0.9× best fixed proposer ({best}): {ratio:.2f}×"))
        opens = [n for n in names if n in OPEN_ENDED]
        if "auto" in cols and PLAIN in cols and opens:
            auto, plain = _pooled(rows, opens, "auto"), _pooled(rows, opens, PLAIN)
            out.append(_line(auto / plain >= 0.97, f"{mode} {weight_format} open-ended ({', '.join(opens)}): "
                             f"auto ≥ 0.97× plain: {auto / plain:.2f}×"))
        heavy = [n for n in names if n in COPY_HEAVY]
        if "auto" in cols and heavy:
            auto = _pooled(rows, heavy, "auto")
            tag = "" if mode == "cold" else " (target is cold; shown for reference)"
            if PLAIN in cols:
                r = auto / _pooled(rows, heavy, PLAIN)
                out.append(_line(r >= 3 if mode == "cold" else None,
                                 f"{mode} copy-heavy ({', '.join(heavy)}): auto ≥ 3× own plain: {r:.2f}×{tag}"))
            for peer, label in ((HF_LOOKUP, "HF prompt lookup"), (LLAMA_PLAIN, "llama.cpp plain")):
                if peer in cols:
                    r = auto / _pooled(rows, heavy, peer)
                    out.append(_line(r >= 1.5 if mode == "cold" else None,
                                     f"{mode} copy-heavy ({', '.join(heavy)}): auto ≥ 1.5× {label}: {r:.2f}×{tag}"))
    out += measured_copy(modes, overlaps or {})
    bad = total = 0
    seen: set[int] = set()  # HF columns are measured once and appear in every mode's table: count them once
    for rows in modes.values():
        for n in names:
            for run in rows[n].values():
                if id(run["requests"]) not in seen:
                    seen.add(id(run["requests"]))
                    bad, total = bad + len(run.get("mismatches") or []), total + len(run["requests"])
    if float32:
        out.append(_line(bad == 0, f"float32 greedy output identical to plain on every request: {total - bad}/{total}"))
    else:
        out.append(_line(None, f"{weight_format}: {bad} of {total} request outputs differ from plain (reduced "
                               "precision: not required to be bit-identical)"))
    return out


def overlap(outputs: list[list[int]], prompt_ids: list[list[int]]) -> list[dict]:
    """How much of each reference output a copy-based drafter can exploit."""
    return [{"prompt_tokens": len(p), "output_tokens": len(o), "lcs": lcs(o, p) / max(1, len(o)), "copied": copied(o, p)}
            for o, p in zip(outputs, prompt_ids)]


def report(rows: dict, names: list[str], columns: list[str], overlaps: dict, sources: dict, checks: list[dict],
           fmt: str, cold_vs_warm: list, seed: int) -> str:
    """The markdown printed at the end of a run: per mode the tok/s table and the per-request
    distribution, then the targets, the overlap of each reference output and the generated sources."""
    out = []
    for mode, mode_rows in rows.items():
        hf = [c for c in columns if mode_rows[names[0]][c].get("shared")] if names else []
        out += [f"\n### {mode} ({fmt}): tok/s (ratio vs our plain; acceptance rate, tokens per verify step)\n",
                table(names, columns, mode_rows)]
        if hf:
            out.append(f"\n({', '.join(hf)}: stateless, measured once and shown in both modes)")
        out += ["\nper-request tok/s ratio vs plain: min / p25 / median / p75 / max\n",
                distribution_table(names, columns, mode_rows)]
    out.append("\n**Targets** (computed from this run):\n")
    out += [f"- {c['text']}" for c in checks]
    if len(rows) == 2:
        out.append(f"- cold plain == warm plain on every request: {'yes' if not cold_vs_warm else cold_vs_warm}")
    out.append("\nreference output overlap with its prompt (lcs / copied), per request:")
    for n in names:
        out.append(f"  {n}: " + ", ".join(f"{o['lcs']:.2f}/{o['copied']:.2f} ({o['output_tokens']} tok)" for o in overlaps[n]))
    if sources:
        out.append(f"\ngenerated requests (seed {seed}):")
        for n, metas in sources.items():
            out.append(f"  {n}: " + "; ".join(m.get("source") or f"{m.get('task')}: {m.get('topic')}" for m in metas))
    return "\n".join(out)
