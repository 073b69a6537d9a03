"""The FastAPI app: OpenAI-compatible routes over one AsyncEngine."""
from __future__ import annotations

import time
from typing import Optional

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import EventSourceResponse

from ..config import ServerConfig
from ..engine.async_engine import AsyncEngine
from ..engine.validation import validate
from ..auth import check_bearer
from ..cache.session_store import Session, SessionStore
from ..errors import EngineDead, InvalidRequest, ModelNotFound, Overloaded, PayloadTooLarge
from ..metrics import Metrics
from ..tokenizer import apply_chat_template
from ..types import SamplingParams, SpeculativeParams
from . import errors
from .generation import ChoiceEnd, run_choice
from .responses import Completion, spec_dict
from .schemas import ChatCompletionRequest, CompletionRequest


class ServerState:
    """What the routes need; `engine` is None while the model loads."""

    def __init__(self, config: ServerConfig, engine: Optional[AsyncEngine] = None):
        self.config = config
        self.engine: Optional[AsyncEngine] = None
        self.metrics: Optional[Metrics] = None
        if engine is not None:
            self.attach(engine)

    def attach(self, engine: AsyncEngine) -> None:
        store = engine.core.sessions
        self.metrics = Metrics(lambda: engine.num_running, lambda: engine.num_waiting,
                               lambda: store.num_sessions, lambda: store.total_bytes)
        engine.on_step = self.metrics.observe_step
        self.engine = engine

    def ready(self) -> AsyncEngine:
        if self.engine is None:
            raise EngineDead("the model is still loading; retry shortly")
        if not self.engine.alive:
            raise EngineDead("the engine has failed; restart the server")
        return self.engine


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="Kakeya", description="OpenAI-compatible local inference with lossless speculative decoding")
    errors.install(app)
    app.state.kakeya = state

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > state.config.max_body_bytes:
            e = PayloadTooLarge(f"request body is {length} bytes; the limit is {state.config.max_body_bytes}")
            return errors.engine_error_response(e)
        return await call_next(request)

    def auth(request: Request) -> None:
        keys = state.config.api_keys
        if not keys:
            return
        check_bearer(request.headers.get("authorization", ""), keys, "`Authorization: Bearer <key>`")

    @app.get("/healthz")
    async def healthz():
        try:
            engine = state.ready()
        except EngineDead as e:
            return errors.engine_error_response(e)
        return {"status": "ok", "model": engine.llm.info.name}

    @app.get("/metrics")
    async def metrics():
        body = state.metrics.render() if state.metrics else b""
        return Response(body, media_type=Metrics.content_type)

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def list_models():
        engine = state.ready()
        return {"object": "list", "data": [_model_card(engine)]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(auth)])
    async def get_model(model_id: str):
        engine = state.ready()
        _check_model(engine, model_id)
        return _model_card(engine)

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat(body: ChatCompletionRequest, request: Request):
        engine = state.ready()
        _check_model(engine, body.model)
        kwargs = dict(body.chat_template_kwargs or {})
        prompt = apply_chat_template(
            engine.llm.tokenizer, [m.to_template() for m in body.messages], tools=body.tools,
            enable_thinking=kwargs.get("enable_thinking"),
        )
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await _complete(state, engine, body, prompt, max_tokens, chat=True, session=_session(engine, body, request))

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(body: CompletionRequest, request: Request):
        engine = state.ready()
        _check_model(engine, body.model)
        tok = engine.llm.tokenizer
        prompt = list(body.prompt) if isinstance(body.prompt, list) else tok(body.prompt, add_special_tokens=False)["input_ids"]
        return await _complete(state, engine, body, prompt, body.max_tokens, chat=False, session=_session(engine, body, request))

    @app.get("/v1/sessions/{session_id}", dependencies=[Depends(auth)])
    async def get_session(session_id: str):
        store = state.ready().core.sessions
        return session_info(store.get(session_id), store)

    @app.delete("/v1/sessions/{session_id}", dependencies=[Depends(auth)])
    async def delete_session(session_id: str):
        state.ready().core.sessions.close(session_id)
        return {"id": session_id, "object": "session.deleted", "deleted": True}

    return app


def _session(engine: AsyncEngine, body, request: Request) -> Optional[str]:
    """The session named by the body's `session_id` or the `X-Session-Id` header; created on first use."""
    sid = body.session_id or request.headers.get("x-session-id")
    if sid is None:
        return None
    if body.n != 1:
        raise InvalidRequest("a session continues one conversation: n must be 1 with session_id", "n")
    engine.core.sessions.idle(sid, "wait for it to finish or cancel it", create=True)  # refuse before any SSE header
    return sid


def session_info(s: Session, store: SessionStore) -> dict:
    return {
        "id": s.session_id, "object": "session", "history_length": len(s.history), "kv_cached_tokens": s.kv_length,
        "kv_bytes": s.kv_bytes, "idle_seconds": round(store.idle_seconds(s), 3), "busy": s.busy,
        "speculative": spec_dict(s.stats),
    }


def _model_card(engine: AsyncEngine) -> dict:
    info = engine.llm.info
    return {"id": info.name, "object": "model", "created": 0, "owned_by": "kakeya", "max_model_len": info.max_context}


def _check_model(engine: AsyncEngine, model: Optional[str]) -> None:
    if model is not None and model != engine.llm.info.name:
        raise ModelNotFound(f"the model '{model}' does not exist; this server serves '{engine.llm.info.name}'", "model")


def _sampling(body, prompt_len: int, max_tokens: Optional[int], engine: AsyncEngine, index: int) -> SamplingParams:
    if max_tokens is None:
        max_tokens = max(1, engine.llm.info.max_context - prompt_len)
    try:
        bias = tuple((int(t), float(b)) for t, b in (body.logit_bias or {}).items())
    except ValueError:
        raise InvalidRequest("logit_bias keys must be token ids (integers as strings)", "logit_bias") from None
    return SamplingParams(
        max_tokens, body.temperature, max(body.top_k, 0), body.top_p, body.min_p,
        seed=None if body.seed is None else body.seed + index, logprobs=body.num_logprobs,
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty, logit_bias=bias,
        ignore_eos=body.ignore_eos,
    )


def _spec(body, engine: AsyncEngine) -> SpeculativeParams:
    default = engine.core.config.speculative
    opt = body.speculative
    if opt is None:
        return default
    return SpeculativeParams(opt.method or default.method,
                             default.num_draft_tokens if opt.num_draft_tokens is None else opt.num_draft_tokens)


async def _complete(state: ServerState, engine: AsyncEngine, body, prompt: list[int], max_tokens, chat: bool,
                    session: Optional[str] = None):
    if not prompt:
        raise InvalidRequest("prompt is empty: at least one prompt token is required", "messages" if chat else "prompt")
    if not chat and isinstance(body.prompt, str) and max_tokens is None:
        max_tokens = 16  # OpenAI's default for /v1/completions
    # Validate every choice up front so a bad request is a 400, never a broken stream.
    params = [_sampling(body, len(prompt), max_tokens, engine, i) for i in range(body.n)]
    spec = _spec(body, engine)
    validate(prompt, params[0], spec, engine.core)
    sched = engine.core.scheduler
    if engine.num_waiting + body.n > sched.max_waiting:  # refuse before any header is sent
        raise Overloaded(f"queue is full ({sched.max_waiting} waiting requests); retry later")
    t0 = time.perf_counter()
    endpoint = "/v1/chat/completions" if chat else "/v1/completions"
    tools = chat and bool(body.tools) and body.tool_choice != "none"
    out = Completion(chat, engine.llm.info.name, len(prompt), body.n, engine.llm.tokenizer, tools,
                     body.num_logprobs is not None, body.return_token_ids)
    streams = [run_choice(engine, prompt, p, spec, body.stop_list, session) for p in params]

    def record(ends: list[ChoiceEnd], status: int = 200) -> None:
        firsts = [e.first_token_at for e in ends if e.first_token_at]
        reason = ends[0].finish_reason if ends else "error"
        state.metrics.observe_request(endpoint, status, reason, len(prompt), sum(e.completion_tokens for e in ends),
                                      (min(firsts) - t0) if firsts else None, time.perf_counter() - t0,
                                      [g for e in ends for g in e.token_gaps])

    if not body.stream:
        echo = engine.llm.tokenizer.decode(prompt) if not chat and body.echo else ""
        response, ends = await out.collect(streams, echo)
        record(ends)
        return JSONResponse(response)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events():
        try:
            async for event in out.stream(streams, include_usage, record):
                yield event
        except Exception as e:  # noqa: BLE001 - after headers are sent, errors travel in-band
            record([], getattr(e, "http_status", 500))
            yield {"event": "error", "data": errors.sse_error(e)}
        yield {"data": "[DONE]"}

    return EventSourceResponse(events(), ping=state.config.keepalive_seconds)
