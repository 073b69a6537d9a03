"""LLM: a loaded model + tokenizer around one EngineCore, with a blocking generate()."""
from __future__ import annotations

from typing import Optional, Sequence

from ..config import EngineConfig
from ..models import LoadedModel
from ..tokenizer import decode
from ..types import EngineResult, SamplingParams, SpeculativeParams, TokenCallback, Usage
from .core import EngineCore


class LLM:
    def __init__(self, loaded: LoadedModel, config: EngineConfig = EngineConfig()):
        self.model, self.tokenizer, self.info = loaded.model, loaded.tokenizer, loaded.info
        self.core = EngineCore(self.model, self.info.eos_ids, config)

    def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingParams = SamplingParams(),
        spec: Optional[SpeculativeParams] = None,
        on_token: Optional[TokenCallback] = None,
    ) -> EngineResult:
        """Run one request to completion (other queued requests advance alongside it)."""
        req = self.core.add_request(prompt_ids, sampling, spec, on_token)
        while not req.finished:
            self.core.step()
        return EngineResult(
            token_ids=list(req.output_ids),
            text=decode(self.tokenizer, req.output_ids),
            finish_reason=req.finish_reason,
            usage=Usage(len(req.prompt_ids), len(req.output_ids)),
            spec=req.stats,
        )
