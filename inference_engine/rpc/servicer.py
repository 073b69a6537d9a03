"""RuntimeService: token-level sessions over the same AsyncEngine the HTTP edge uses.

Every method raises EngineErrors; the interceptor (interceptors.py) maps them to status codes.
"""
from __future__ import annotations

import time
from typing import AsyncIterator, Callable

from ..engine.async_engine import AsyncEngine
from ..engine.validation import check_token_ids
from ..tokenizer import StreamingDetokenizer
from ..types import EngineResult
from .convert import done_to_pb, info_to_pb, sampling_from_pb, spec_from_pb
from .pb.kakeya.v1 import runtime_pb2 as pb
from .pb.kakeya.v1 import runtime_pb2_grpc as pb_grpc


class RuntimeServicer(pb_grpc.RuntimeServiceServicer):
    def __init__(self, engine: Callable[[], AsyncEngine]):
        self.engine = engine  # raises EngineDead while the model loads or after a failure

    async def CreateSession(self, request: pb.CreateSessionRequest, context) -> pb.CreateSessionResponse:
        core = self.engine().core
        check_token_ids(request.eos_token_ids, core.vocab_size, "eos_token_ids")
        s = core.sessions.create(list(request.eos_token_ids), request.client_label)
        return pb.CreateSessionResponse(session_id=s.session_id)

    async def AppendTokens(self, request: pb.AppendTokensRequest, context) -> pb.AppendTokensResponse:
        core = self.engine().core
        core.sessions.get(request.session_id)  # NOT_FOUND before INVALID_ARGUMENT
        check_token_ids(request.token_ids, core.vocab_size, "token_ids")  # before anything changes
        return pb.AppendTokensResponse(history_length=core.sessions.append(request.session_id, list(request.token_ids)))

    async def Generate(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateResponse]:
        engine = self.engine()
        sampling = sampling_from_pb(request)
        spec = spec_from_pb(request.speculative, engine.core.config.speculative)
        detok = StreamingDetokenizer(engine.llm.tokenizer)
        t0, first = time.perf_counter(), None
        # cancelling this RPC cancels the generator, which aborts the engine request within a step
        async for item in engine.generate(None, sampling, spec, session_id=request.session_id):
            if isinstance(item, EngineResult):
                tail = detok.flush()
                if tail:
                    yield pb.GenerateResponse(tokens=pb.TokenChunk(text=tail))
                history = len(engine.core.sessions.get(request.session_id).history)
                now = time.perf_counter()
                yield done_to_pb(item, history, (first or now) - t0, now - t0)
                return
            token, _ = item
            first = first or time.perf_counter()
            yield pb.GenerateResponse(tokens=pb.TokenChunk(token_ids=[token], text=detok.push(token)))

    async def CloseSession(self, request: pb.CloseSessionRequest, context) -> pb.CloseSessionResponse:
        self.engine().core.sessions.close(request.session_id)
        return pb.CloseSessionResponse()

    async def GetSessionInfo(self, request: pb.GetSessionInfoRequest, context) -> pb.SessionInfo:
        store = self.engine().core.sessions
        s = store.get(request.session_id)
        return info_to_pb(s, store.idle_seconds(s))
