"""SDK dataclasses ⇄ protobuf messages: the only module that touches kakeya.v1 message types
besides the stubs, so protobuf never leaks into what callers see."""
from __future__ import annotations

from typing import Sequence

from ._pb.kakeya.v1 import runtime_pb2 as pb
from .runtime_types import Frame, GenerateDone, GenerateOptions, RuntimeSessionInfo, SpeculativeStats, TokenChunk


def create_session_to_pb(eos_token_ids: Sequence[int], label: str, kv_window=None) -> pb.CreateSessionRequest:
    req = pb.CreateSessionRequest(eos_token_ids=[int(t) for t in eos_token_ids], client_label=label)
    if kv_window is not None:  # (sink, window); window 0: the full cache
        req.kv_window.sink, req.kv_window.window = (int(x) for x in kv_window)
    return req


def append_to_pb(session_id: str, token_ids: Sequence[int]) -> pb.AppendTokensRequest:
    return pb.AppendTokensRequest(session_id=session_id, token_ids=[int(t) for t in token_ids])


def generate_to_pb(session_id: str, opts: GenerateOptions) -> pb.GenerateRequest:
    """Optional proto3 fields are set only when given, so "unset" keeps its server meaning."""
    req = pb.GenerateRequest(session_id=session_id, max_tokens=opts.max_tokens)
    if opts.seed is not None:
        req.seed = opts.seed
    if opts.temperature is not None:
        req.temperature = opts.temperature
    if opts.top_p is not None:
        req.top_p = opts.top_p
    if opts.top_k is not None:
        req.top_k = opts.top_k
    if opts.speculative_method is not None:
        req.speculative.method = opts.speculative_method
    if opts.num_draft_tokens is not None:
        req.speculative.num_draft_tokens = opts.num_draft_tokens
    return req


def close_to_pb(session_id: str) -> pb.CloseSessionRequest:
    return pb.CloseSessionRequest(session_id=session_id)


def info_request_to_pb(session_id: str) -> pb.GetSessionInfoRequest:
    return pb.GetSessionInfoRequest(session_id=session_id)


def session_id_from_pb(r: pb.CreateSessionResponse) -> str:
    return r.session_id


def history_length_from_pb(r: pb.AppendTokensResponse) -> int:
    return int(r.history_length)


def stats_from_pb(s: pb.SpeculativeStats) -> SpeculativeStats:
    return SpeculativeStats(s.drafts, s.draft_tokens, s.accepted_tokens, s.recovered_tokens, s.bonus_tokens,
                            s.plain_steps, s.verify_steps, tuple(s.accepted_per_position))


def frame_from_pb(r: pb.GenerateResponse) -> Frame:
    if r.WhichOneof("frame") == "done":
        d = r.done
        return GenerateDone(d.stop_reason, d.prompt_tokens, d.cached_tokens, d.completion_tokens, d.history_length,
                            d.time_to_first_token_s, d.total_s, stats_from_pb(d.speculative))
    return TokenChunk(tuple(r.tokens.token_ids), r.tokens.text)


def info_from_pb(i: pb.SessionInfo) -> RuntimeSessionInfo:
    return RuntimeSessionInfo(i.session_id, i.client_label, i.history_length, i.kv_cached_tokens, i.kv_bytes,
                              i.idle_seconds, i.busy, stats_from_pb(i.speculative))
