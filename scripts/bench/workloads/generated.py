"""Seeded workloads built from real text nobody tuned on: copy, quote, reformat, summarise, open.

The committed workloads (the JSON files beside this module) were phrased by hand until the 135M
model did the task, so a proposer or controller tuned on them can flatter itself. This family is
drawn by a seed from text the project never chose:

- code: `.py` files of the running interpreter's standard library (`sysconfig.get_paths()
  ['stdlib']`), skipping test suites, site-packages, encoding tables, files under 2 kB or over
  200 kB, and excerpts that are not plain ASCII source or have lines over 100 characters.
  Licence: PSF License v2 (CPython's own code).
- prose: the Python Language Reference text shipped with CPython as `pydoc_data.topics` (what
  `help("class")` prints): ~460 kB of English prose, from which unindented paragraphs of 40-110
  words are taken (indented blocks are grammar or code). Licence: PSF License v2 (the Python
  documentation). No offline package of public-domain literature was found among the installed
  packages, and adding one would be a new dependency, so the benchmark needs nothing beyond the
  standard library.
- open-ended prompts: templates filled from the word lists below. The lists were written once,
  before any run, and are not edited to suit results; the seed picks the words.

Kinds (each request records what it was built from in `meta`):
  copy       a 30-50 line stdlib excerpt, "copy it exactly"; answer prefixed with a code fence
  quote      one prose paragraph, "repeat it word for word"; prefixed with its first four words
  reformat   a JSON document describing a random stdlib module (names read with `ast`, nothing
             imported) → YAML, or a 12-25 line excerpt → the same code with 2-space indentation
  summarise  3+ consecutive paragraphs (200-450 words), "summarise in two sentences, then quote
             one sentence exactly"; no prefix
  open       a short story on a seeded topic, or a seeded science explanation; no prefix
The prefixes are generic per kind (the committed README explains why the 135M model needs one to
copy at all); whether an answer really overlaps its prompt is measured by spec.py, not assumed.

`generate(n, seed, kinds, max_tokens)` returns workloads in the shape of spec.load_workload:
one per kind, named `gen_<kind>`. Random(f"{seed}/{kind}") drives each kind, so adding a kind
or changing n for one kind never reshuffles another.
"""
from __future__ import annotations

import ast
import json
import random
import re
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

KINDS = ("copy", "quote", "reformat", "summarise", "open")
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings", "__phello__"}

STORY_ADJ = ["lonely", "curious", "clumsy", "brave", "forgetful", "tiny", "ancient", "cheerful", "stubborn",
             "nervous", "generous", "sleepy"]
STORY_WHO = ["lighthouse keeper", "robot", "baker", "fox", "astronaut", "librarian", "dragon", "fisherman",
             "violin teacher", "street cat", "gardener", "train conductor"]
STORY_WHERE = ["a mountain village", "a flooded city", "the bottom of the sea", "a desert market", "a space station",
               "an old castle", "a busy airport", "a frozen lake", "a night bus", "a rainforest"]
STORY_GOAL = ["finds a mysterious map", "loses an important key", "learns to swim", "makes an unlikely friend",
              "has to keep a secret", "builds a flying machine", "gets lost in a storm", "wins a strange contest",
              "discovers a hidden door", "must deliver a letter before sunset"]
SCIENCE = ["why the sky is blue", "how vaccines train the immune system", "why ice floats on water",
           "how a rainbow forms", "what causes ocean tides", "how photosynthesis works",
           "why metals conduct electricity", "how earthquakes happen", "why the moon has phases",
           "how sound travels through air", "why magnets attract iron", "how bees make honey",
           "why leaves change colour in autumn", "how lightning forms", "how the heart pumps blood",
           "what a black hole is", "why salt melts ice on roads", "how a compass works",
           "why bread rises", "how batteries store energy"]
SCIENCE_ASK = ["Explain {} in simple terms.", "Can you explain {}?", "Explain to a curious teenager {}."]


@lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, ...]:
    """Candidate source files, sorted so a seed picks the same file on the same interpreter."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(root.rglob("*.py")):
        parts = p.relative_to(root).parts
        if any(d in SKIP_DIRS or d.startswith("config-") for d in parts[:-1]) or parts[-1].startswith("test"):
            continue
        if 2_000 <= p.stat().st_size <= 200_000:
            out.append(p)
    return tuple(out)


def stdlib_name(path: Path) -> str:
    return str(path.relative_to(sysconfig.get_paths()["stdlib"]))


def _plain(lines: list[str]) -> bool:
    """Readable source: ASCII, no very long lines, mostly non-blank lines with words on them."""
    text = "\n".join(lines)
    if not text.isascii() or any(len(line) > 100 for line in lines):
        return False
    worded = sum(bool(re.search(r"[A-Za-z]{2}", line)) for line in lines)
    return worded >= 0.6 * len(lines)


def excerpt(rng: random.Random, low: int, high: int, need_indent: bool = False) -> tuple[Path, int, str]:
    """A random `low`-`high` line excerpt of a random stdlib file: (file, first line (1-based), text)."""
    files = stdlib_files()
    for _ in range(200):
        path = rng.choice(files)
        source = path.read_text(encoding="utf-8", errors="replace")
        lines, n = source.splitlines(), rng.randint(low, high)
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        # start where a top-level statement does (its first decorator), never inside a string
        firsts = {min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1 for node in tree.body}
        starts = sorted(i for i in firsts if i <= len(lines) - n)
        if not starts:
            continue
        start = rng.choice(starts)
        chunk = lines[start:start + n]
        while chunk and not chunk[-1].strip():  # no trailing blank lines to copy
            chunk.pop()
        if len(chunk) >= low * 0.8 and _plain(chunk) and (not need_indent or any(s.startswith("    ") for s in chunk)):
            return path, start + 1, "\n".join(chunk)
    raise RuntimeError("no usable stdlib excerpt found in 200 tries")


@lru_cache(maxsize=1)
def prose_topics() -> dict[str, list[str]]:
    """pydoc topic → its prose paragraphs (unindented, 40-110 words, each joined onto one line)."""
    from pydoc_data.topics import topics

    out = {}
    for name in sorted(topics):
        paras = []
        for block in topics[name].split("\n\n"):
            if not block.strip() or block[:1].isspace() or "::=" in block:
                continue
            text = " ".join(block.split())
            words = len(text.split())
            letters = sum(c.isalpha() or c.isspace() for c in text) / len(text)
            if 40 <= words <= 110 and letters > 0.9:
                paras.append(text)
        if paras:
            out[name] = paras
    return out


def passage(rng: random.Random, min_words: int, max_words: int) -> tuple[str, str]:
    """Consecutive prose paragraphs of one topic: (topic, text)."""
    topics = prose_topics()
    names = [n for n, ps in topics.items() if sum(len(p.split()) for p in ps) >= min_words]
    name = rng.choice(names)
    paras = topics[name]
    start = rng.randrange(len(paras))
    chosen: list[str] = []
    for p in paras[start:] + paras[:start]:  # wrap around: the topic has enough words in total
        if chosen and sum(len(c.split()) for c in chosen) + len(p.split()) > max_words:
            break
        chosen.append(p)
        if sum(len(c.split()) for c in chosen) >= min_words:
            break
    return name, "\n\n".join(chosen)


def module_document(rng: random.Random) -> tuple[Path, dict]:
    """A small JSON-able description of a random top-level stdlib module, read with ast (nothing imported)."""
    files = [p for p in stdlib_files() if "/" not in stdlib_name(p)]
    for _ in range(100):
        path = rng.choice(files)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        funcs = sorted(n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_"))
        classes = sorted(n.name for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_"))
        consts = sorted({t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                         if isinstance(t, ast.Name) and t.id.isupper() and not t.id.startswith("_")})
        if len(funcs) + len(classes) < 3:
            continue
        doc = {"module": path.stem}
        summary = (ast.get_docstring(tree) or "").strip().splitlines()
        if summary and summary[0].isascii():
            doc["summary"] = summary[0]
        for key, names, cap in (("functions", funcs, 6), ("classes", classes, 4), ("constants", consts, 4)):
            if names:
                doc[key] = sorted(rng.sample(names, min(cap, len(names))))
        doc["source_lines"] = len(path.read_text(encoding="utf-8").splitlines())
        return path, doc
    raise RuntimeError("no usable stdlib module found in 100 tries")


def user(text: str, prefix: str = "", **meta) -> dict:
    return {"messages": [{"role": "user", "content": text}], "prefix": prefix, "meta": meta}


def make_request(kind: str, rng: random.Random, i: int, offset: int = 0) -> dict:
    if kind == "copy":
        path, line, code = excerpt(rng, 30, 50)
        return user(f"```python\n{code}\n```\n\nCopy the code above exactly, line for line.", "```python\n",
                    source=f"{stdlib_name(path)}:{line}", lines=code.count("\n") + 1)
    if kind == "quote":
        topic = rng.choice(sorted(prose_topics()))
        para = rng.choice(prose_topics()[topic])
        return user(f"Repeat the following paragraph word for word.\n\n{para}", " ".join(para.split()[:4]),
                    source=f"pydoc_data.topics[{topic!r}]", words=len(para.split()))
    if kind == "reformat":
        if rng.random() < 0.5:
            path, doc = module_document(rng)
            return user(f"Convert this JSON document to YAML.\n\n```json\n{json.dumps(doc, indent=2)}\n```", "```yaml\n",
                        source=stdlib_name(path), task="json_to_yaml")
        path, line, code = excerpt(rng, 12, 25, need_indent=True)
        return user(f"```python\n{code}\n```\n\nRewrite the code above with two-space indentation instead of four "
                    "spaces. Change nothing else.", "```python\n", source=f"{stdlib_name(path)}:{line}", task="reindent")
    if kind == "summarise":
        topic, text = passage(rng, 200, 450)
        return user(f"{text}\n\nSummarise the passage above in two sentences. Then quote one sentence from it "
                    "exactly, in quotation marks.", source=f"pydoc_data.topics[{topic!r}]", words=len(text.split()))
    if kind == "open":
        if (i + offset) % 2 == 0:  # alternate, from a seeded start: both sub-kinds appear once n >= 2
            topic = f"a {rng.choice(STORY_ADJ)} {rng.choice(STORY_WHO)} in {rng.choice(STORY_WHERE)} who {rng.choice(STORY_GOAL)}"
            return user(f"Write a short story about {topic}.", task="story", topic=topic)
        fact = rng.choice(SCIENCE)
        return user(rng.choice(SCIENCE_ASK).format(fact), task="science", topic=fact)
    raise ValueError(f"unknown generated kind {kind!r}; choose from {', '.join(KINDS)}")


def generate(n: int, seed: int, kinds: tuple[str, ...] = KINDS, max_tokens: int = 192) -> list[dict]:
    """n requests per kind, as workloads named gen_<kind> (independent requests, not a conversation)."""
    out = []
    for kind in kinds:
        rng = random.Random(f"{seed}/{kind}")
        offset = rng.randrange(2)
        requests = [make_request(kind, rng, i, offset) for i in range(n)]
        out.append({"name": f"gen_{kind}", "description": f"generated ({kind}), seed {seed}", "max_tokens": max_tokens,
                    "conversation": False, "generated": True, "seed": seed, "requests": requests})
    return out


def sources() -> dict:
    """Where the text came from on this interpreter (printed and stored with the results)."""
    return {"python": sys.version.split()[0], "stdlib": sysconfig.get_paths()["stdlib"],
            "stdlib_files": len(stdlib_files()), "prose": "pydoc_data.topics", "prose_topics": len(prose_topics())}


if __name__ == "__main__":  # preview: python scripts/bench/workloads/generated.py [n] [seed]
    n, seed = (int(a) for a in (sys.argv[1:3] + ["1", "1234"][len(sys.argv[1:3]):]))
    print(json.dumps(sources()))
    for wl in generate(n, seed):
        for req in wl["requests"]:
            print(f"--- {wl['name']} {req['meta']}\n{req['messages'][0]['content'][:400]}\n[prefix {req['prefix']!r}]")
