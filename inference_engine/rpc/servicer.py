"""RuntimeService: token-level sessions over the same AsyncEngine the HTTP edge uses.

Every method raises EngineErrors; the interceptor (interceptors.py) maps them to status codes.
"""
from __future__ import annotations

import time
from typing import AsyncIterator, Callable

from ..engine.async_engine import AsyncEngine
from ..tokenizer import StreamingDetokenizer
from ..types import EngineResult, Submission
from .convert import done_to_pb, info_to_pb, kv_window_from_pb, sampling_from_pb, spec_from_pb
from .interceptors import TENANT
from .pb.kakeya.v1 import runtime_pb2 as pb
from .pb.kakeya.v1 import runtime_pb2_grpc as pb_grpc


class RuntimeServicer(pb_grpc.RuntimeServiceServicer):
    def __init__(self, engine: Callable[[], AsyncEngine]):
        self.engine = engine  # raises EngineDead while the model loads, after a failure, or while draining

    async def CreateSession(self, request: pb.CreateSessionRequest, context) -> pb.CreateSessionResponse:
        s = await self.engine().create_session(list(request.eos_token_ids), request.client_label, TENANT.get(),
                                               kv_window=kv_window_from_pb(request))
        return pb.CreateSessionResponse(session_id=s.session_id)

    async def AppendTokens(self, request: pb.AppendTokensRequest, context) -> pb.AppendTokensResponse:
        n = await self.engine().append_tokens(request.session_id, list(request.token_ids), TENANT.get())
        return pb.AppendTokensResponse(history_length=n)

    async def Generate(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateResponse]:
        engine = self.engine()
        sampling = sampling_from_pb(request)
        spec = spec_from_pb(request.speculative, engine.limits.default_spec)
        detok = StreamingDetokenizer(engine.tokenizer)
        t0, first = time.perf_counter(), None
        # admitted (session checked out) before the first frame; cancelling the RPC aborts it within a step
        stream = await engine.add(Submission(None, sampling, spec, request.session_id, tenant=TENANT.get(),
                                             kv_window=kv_window_from_pb(request)))
        try:
            async for item in stream:
                if isinstance(item, EngineResult):
                    tail = detok.flush()
                    if tail:
                        yield pb.GenerateResponse(tokens=pb.TokenChunk(text=tail))
                    now = time.perf_counter()
                    history = item.usage.prompt_tokens + item.usage.completion_tokens  # the session's new history
                    yield done_to_pb(item, history, (first or now) - t0, now - t0)
                    return
                token, _ = item
                first = first or time.perf_counter()
                yield pb.GenerateResponse(tokens=pb.TokenChunk(token_ids=[token], text=detok.push(token)))
        finally:
            await stream.abort()

    async def CloseSession(self, request: pb.CloseSessionRequest, context) -> pb.CloseSessionResponse:
        await self.engine().close_session(request.session_id, TENANT.get())
        return pb.CloseSessionResponse()

    async def GetSessionInfo(self, request: pb.GetSessionInfoRequest, context) -> pb.SessionInfo:
        return info_to_pb(await self.engine().session_info(request.session_id, TENANT.get()))
