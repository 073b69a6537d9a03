"""Pure tensor functions that turn verifier logits into a sampling distribution.

Order follows HF/vLLM: temperature, then top-k, top-p and min-p filters. Rows are
independent positions (the k+1 verify positions of one request share one SamplingParams).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..types import SamplingParams


def make_generator(seed: Optional[int], device: torch.device) -> Optional[torch.Generator]:
    """Per-request generator: the same seed gives the same output, independent of other requests."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed % (1 << 63))  # any integer is a valid seed (OpenAI accepts negative and huge ones)
    return gen


def position_generator(seed: Optional[int], position: int, device: torch.device) -> Optional[torch.Generator]:
    """The random stream for output position `position` of a seeded request. Keying by
    position (not by draw order) makes the sample independent of how steps were drafted."""
    if seed is None:
        return None
    return make_generator(seed * 0x9E3779B1 + position, device)  # make_generator reduces it mod 2**63


def adjust_logits(logits: torch.Tensor, output_ids: Sequence[int], draft: Sequence[int], params: SamplingParams) -> torch.Tensor:
    """Presence/frequency penalties and logit_bias on the verify rows [k+1, V]. Row i sees the
    generated tokens plus drafts d1..d_i as its history, exactly as plain decoding would."""
    if not params.adjusts_logits:
        return logits
    x = logits.float().clone()  # [k+1, V]
    if params.presence_penalty or params.frequency_penalty:
        counts = torch.zeros(x.shape[-1], device=x.device)  # [V]
        if output_ids:
            counts.index_add_(0, torch.tensor(list(output_ids), device=x.device), torch.ones(len(output_ids), device=x.device))
        for i in range(x.shape[0]):
            if i:
                counts[draft[i - 1]] += 1
            x[i] -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
    for token, bias in params.logit_bias:
        x[:, token] += bias
    return x


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """logits [N, V] → float32 logits with temperature applied and filtered tokens at -inf."""
    x = logits.float() / max(params.temperature, 1e-5)  # [N, V]
    if 0 < params.top_k < x.shape[-1]:
        kth = torch.topk(x, params.top_k, dim=-1).values[..., -1:]  # [N, 1]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_x, idx = torch.sort(x, dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        # drop a token when the mass strictly before it already reaches top_p (always keeps the first)
        drop = (probs.cumsum(-1) - probs) >= params.top_p
        drop[..., 0] = False  # the top token always stays, even for a top_p that rounds to 0 in float32
        x = x.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    if params.min_p > 0.0:
        probs = x.softmax(-1)
        x = x.masked_fill(probs < params.min_p * probs.amax(-1, keepdim=True), float("-inf"))
    return x


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """logits [N, V] → probabilities [N, V] of the distribution the verifier samples from."""
    return filter_logits(logits, params).softmax(-1)


def sample(probs: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """probs [N, V] → token ids [N]."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
