"""Protobuf ⇄ core dataclasses, converted once at the edge (from_pb / to_pb)."""
from __future__ import annotations

from typing import Optional

from ..engine.async_engine import SessionInfo
from ..types import EngineResult, SamplingParams, SpecStats, SpeculativeParams
from .pb.kakeya.v1 import runtime_pb2 as pb


def sampling_from_pb(req: pb.GenerateRequest) -> SamplingParams:
    """Values as sent; the engine validates them (the one place, for every edge)."""
    return SamplingParams(
        max_tokens=req.max_tokens,
        temperature=req.temperature if req.HasField("temperature") else 0.0,
        top_k=req.top_k if req.HasField("top_k") else 0,
        top_p=req.top_p if req.HasField("top_p") else 1.0,
        seed=req.seed if req.HasField("seed") else None,
    )


def kv_window_from_pb(msg) -> Optional[tuple[int, int]]:
    """(sink, window) of a request's `kv_window` field; None where it is unset."""
    return (msg.kv_window.sink, msg.kv_window.window) if msg.HasField("kv_window") else None


def spec_from_pb(opt: pb.SpeculativeOptions, default: SpeculativeParams) -> SpeculativeParams:
    k = opt.num_draft_tokens if opt.HasField("num_draft_tokens") else default.num_draft_tokens
    return SpeculativeParams(opt.method or default.method, k)


def stats_to_pb(s: SpecStats) -> pb.SpeculativeStats:
    return pb.SpeculativeStats(
        drafts=s.drafts, draft_tokens=s.draft_tokens, accepted_tokens=s.accepted_tokens,
        recovered_tokens=s.recovered_tokens, bonus_tokens=s.bonus_tokens, plain_steps=s.plain_steps,
        verify_steps=s.verify_steps, accepted_per_position=s.accepted_per_pos,
    )


def done_to_pb(r: EngineResult, history_length: int, ttft: float, total: float) -> pb.GenerateResponse:
    return pb.GenerateResponse(done=pb.GenerateDone(
        stop_reason=r.finish_reason.value, prompt_tokens=r.usage.prompt_tokens, cached_tokens=r.usage.cached_tokens,
        completion_tokens=r.usage.completion_tokens, history_length=history_length,
        time_to_first_token_s=ttft, total_s=total, speculative=stats_to_pb(r.spec),
    ))


def info_to_pb(s: SessionInfo) -> pb.SessionInfo:
    return pb.SessionInfo(
        session_id=s.session_id, client_label=s.label, history_length=s.history_length,
        kv_cached_tokens=s.kv_cached_tokens, kv_bytes=s.kv_bytes, idle_seconds=s.idle_seconds, busy=s.busy,
        speculative=stats_to_pb(s.stats),
    )
