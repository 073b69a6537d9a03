"""LLM: a loaded model + tokenizer around one EngineCore, with a blocking generate()."""
from __future__ import annotations

import time
from typing import Optional, Sequence

from ..config import EngineConfig
from ..errors import ModelLoadError
from ..models import LoadedModel
from ..tokenizer import decode
from ..types import EngineResult, SamplingParams, SpeculativeParams, Submission, Timings, TokenCallback, Usage
from .core import EngineCore
from .grammar import GrammarCompiler
from .request import Request
from kv_cache_proposer.draft_model import VocabularyMismatch, check_vocab


def check_draft(draft: LoadedModel, target: LoadedModel) -> None:
    try:
        check_vocab(draft.tokenizer, target.tokenizer, draft.model, target.model)
    except VocabularyMismatch as e:
        raise ModelLoadError(f"draft model {draft.info.name!r} cannot draft for {target.info.name!r}: {e}", "draft_model") from e


class LLM:
    def __init__(self, loaded: LoadedModel, config: EngineConfig = EngineConfig(), draft: Optional[LoadedModel] = None):
        self.model, self.tokenizer, self.info = loaded.model, loaded.tokenizer, loaded.info
        if draft is not None:
            check_draft(draft, loaded)
        self.core = EngineCore(self.model, self.info.eos_ids, config, draft.model if draft else None)
        self.core.grammars = GrammarCompiler(self.tokenizer, self.core.vocab_size, self.info.eos_ids)

    def generate(
        self,
        prompt_ids: Optional[Sequence[int]],
        sampling: SamplingParams = SamplingParams(),
        spec: Optional[SpeculativeParams] = None,
        on_token: Optional[TokenCallback] = None,
        **admission,
    ) -> EngineResult:
        """Run one request to completion (other queued requests advance alongside it); `admission`:
        the rest of a Submission (session_id, kv_window, tenant, request_id, create_session)."""
        req = self.core.add_request(Submission(prompt_ids, sampling, spec, **admission), on_token)
        while not req.finished:
            self.core.step()
        return self.result(req)

    def result(self, req: Request) -> EngineResult:
        return EngineResult(
            token_ids=list(req.output_ids),
            text=decode(self.tokenizer, req.output_ids),
            finish_reason=req.finish_reason,
            usage=Usage(len(req.prompt_ids), len(req.output_ids), req.cached_tokens),
            spec=req.stats,
            logprobs=list(req.logprobs) if req.sampling.logprobs is not None else None,
            prompt_logprobs=list(req.prompt_logprobs) if req.sampling.prompt_logprobs is not None else None,
            timings=_timings(req),
        )


def _timings(req: Request) -> Optional[Timings]:
    if not req.first_token_at:
        return None
    return Timings(req.scheduled_at - req.arrived_at, req.first_token_at - req.scheduled_at,
                   time.monotonic() - req.first_token_at)
