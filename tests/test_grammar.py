"""GrammarCompiler's bookkeeping with the real Qwen3 tokenizer and llguidance: the prepared-template
cache is an LRU by grammar text (checked against one written out here), and a grammar that does not
compile is a 400 naming `response_format` with llguidance's own reason."""
from __future__ import annotations

import json
from collections import OrderedDict

import llguidance
import pytest

from inference_engine.engine.grammar import GrammarCompiler
from inference_engine.errors import InvalidRequest


def _schema(n: int) -> str:
    return llguidance.LLMatcher.grammar_from_json_schema({"type": "object", "properties": {f"f{n}": {"type": "integer"}},
                                                          "required": [f"f{n}"]})


def test_prepared_templates_are_an_lru_by_grammar_text(qwen3_tokenizer):
    compiler = GrammarCompiler(qwen3_tokenizer, 151936, [151645], keep=2)
    reference: OrderedDict[str, None] = OrderedDict()  # the LRU the cache must be
    for n in (0, 1, 0, 2, 1, 1, 3, 0):
        g = _schema(n)
        compiler.prepare(g)
        reference[g] = None
        reference.move_to_end(g)
        while len(reference) > 2:
            reference.popitem(last=False)
        assert list(compiler._templates) == list(reference)
        assert all(isinstance(t, llguidance.LLMatcher) for t in compiler._templates.values())
    fresh = compiler.matcher(_schema(0))  # a copy at the start, whatever the template went through
    assert fresh.valid_prefix(qwen3_tokenizer.encode('{"f0":1}', add_special_tokens=False)) == len(
        qwen3_tokenizer.encode('{"f0":1}', add_special_tokens=False))


@pytest.mark.parametrize("grammar", [
    "not json",
    json.dumps({"grammars": 3}),
    llguidance.LLMatcher.grammar_from_json_schema({"type": "bogus"}),
])
def test_a_grammar_that_does_not_compile_names_response_format(qwen3_tokenizer, grammar):
    compiler = GrammarCompiler(qwen3_tokenizer, 151936, [151645])
    for build in (compiler.prepare, compiler.matcher):
        with pytest.raises(InvalidRequest) as e:
            build(grammar)
        assert e.value.param == "response_format" and str(e.value).startswith("the grammar does not compile: ")
        assert len(str(e.value)) > len("the grammar does not compile: ") + 5  # llguidance's reason follows
