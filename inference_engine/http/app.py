"""The FastAPI app: OpenAI-compatible routes over one Engine (engine/protocol.py); bodies convert in convert.py."""
from __future__ import annotations

import time
import asyncio
from typing import Any, Awaitable, Callable, Optional, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import EventSourceResponse

from ..auth import check_bearer
from ..config import ServerConfig
from ..engine.protocol import Engine, Stream
from ..errors import EngineDead, ModelNotFound, ShuttingDown
from ..metrics import Metrics, engine_metrics
from ..types import Submission
from . import convert, errors, openapi
from .anthropic import convert as anthropic_convert
from .anthropic.render import Message
from .anthropic.schemas import CountTokensRequest, MessagesRequest
from .generation import ChoiceEnd, run_choice
from .responses_api import convert as responses_convert
from .responses_api.render import ResponseRender
from .responses_api.schemas import ResponsesRequest
from .responses_api.store import ResponseStore, Stored
from .middleware import COUNTED, BodyLimit, CountRefusals, RequestId
from .openapi import RESPONSES
from .responses import Completion, session_info
from .schemas import ChatCompletionRequest, CompletionRequest

T = TypeVar("T")
DISCONNECT_POLL_S = 0.1  # how often a non-streaming request checks that its client is still there


class ServerState:
    """What the routes need; `engine` is None while the model loads. `draining` is set on SIGTERM:
    both edges then refuse new work (503 / UNAVAILABLE) while in-flight requests finish."""

    def __init__(self, config: ServerConfig, engine: Optional[Engine] = None):
        self.config = config
        self.engine: Optional[Engine] = None
        self.metrics: Optional[Metrics] = None
        self.draining = False
        self.load_error: Optional[str] = None
        self.responses = ResponseStore()  # /v1/responses stored with store: true
        if engine is not None:
            self.attach(engine)

    def attach(self, engine: Engine, metrics: Optional[Metrics] = None) -> None:
        """`metrics`: a cluster's ingress brings its own (the replicas' engine metrics merged in); else
        `engine` is an AsyncEngine, whose gauges are read at scrape time."""
        self.metrics = metrics or engine_metrics(engine)
        engine.on_step = self.metrics.observe_step
        self.engine = engine

    def ready(self) -> Engine:
        if self.draining:
            raise ShuttingDown("the server is shutting down; retry against another instance")
        if self.load_error is not None:
            raise EngineDead(f"the model failed to load: {self.load_error}")
        if self.engine is None:
            raise EngineDead("the model is still loading; retry shortly")
        if not self.engine.alive:
            raise self.engine.dead_error()
        return self.engine


def create_app(state: ServerState, request_ids: bool = True) -> FastAPI:
    """`request_ids`: set `x-request-id` on responses (off behind Ray Serve's proxy, which sets it)."""
    app = FastAPI(title="Kakeya", description="OpenAI-compatible local inference with lossless speculative decoding")
    errors.install(app)
    openapi.install(app)
    app.state.kakeya = state
    app.add_middleware(BodyLimit, limit=state.config.max_body_bytes)
    app.add_middleware(CountRefusals, metrics=lambda: state.metrics)  # sees the 413s too
    if request_ids:
        app.add_middleware(RequestId)
    if state.config.allowed_origins:  # browsers' preflight and response headers (default: none allowed)
        app.add_middleware(CORSMiddleware, allow_origins=list(state.config.allowed_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id"])

    def auth(request: Request) -> str:
        """The caller's tenant: the hashed key it authenticated with ("" when the server has no keys)."""
        keys = state.config.api_keys
        if not keys:
            return ""
        return check_bearer(request.headers.get("authorization", ""), keys, "`Authorization: Bearer <key>`")

    @app.get("/healthz", responses=RESPONSES["healthz"])
    async def healthz():
        try:
            engine = state.ready()
        except EngineDead as e:
            return errors.engine_error_response(e)
        return {"status": "ok", "model": engine.info.name, **await engine.health()}

    @app.get("/metrics", response_class=Response, responses=RESPONSES["metrics"])
    async def metrics():
        body = state.metrics.render() if state.metrics else b""
        return Response(body, media_type=Metrics.content_type)

    @app.get("/v1/models", dependencies=[Depends(auth)], responses=RESPONSES["models"])
    async def list_models():
        engine = state.ready()
        return {"object": "list", "data": [await _model_card(engine)]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(auth)], responses=RESPONSES["model"])
    async def get_model(model_id: str):
        engine = state.ready()
        _check_model(engine, model_id)
        return await _model_card(engine)

    def auth_anthropic(request: Request) -> str:
        """As `auth`, with Anthropic's `x-api-key` header accepted as well."""
        key = request.headers.get("x-api-key")
        if key and state.config.api_keys:
            return check_bearer(f"Bearer {key}", state.config.api_keys, "`x-api-key: <key>`")
        return auth(request)

    @app.post("/v1/chat/completions", responses=RESPONSES["chat"])
    async def chat(body: ChatCompletionRequest, request: Request, tenant: str = Depends(auth)):
        engine = state.ready()
        _check_model(engine, body.model)
        render = _openai(body, engine, chat=True)
        return await _complete(state, engine, body, [convert.chat_prompt(body, engine.tokenizer)], request, tenant,
                               "/v1/chat/completions", render)

    @app.post("/v1/completions", responses=RESPONSES["completions"])
    async def completions(body: CompletionRequest, request: Request, tenant: str = Depends(auth)):
        engine = state.ready()
        _check_model(engine, body.model)
        return await _complete(state, engine, body, convert.completion_prompts(body, engine.tokenizer), request, tenant,
                               "/v1/completions", _openai(body, engine, chat=False))

    @app.post("/v1/responses", responses=RESPONSES["responses"])
    async def create_response(body: ResponsesRequest, request: Request, tenant: str = Depends(auth)):
        engine = state.ready()
        _check_model(engine, body.model)
        if body.temperature is None:  # the response echoes the temperature that served it
            body = body.model_copy(update={"temperature": engine.limits.default_temperature})
        previous = None if body.previous_response_id is None else \
            state.responses.get(body.previous_response_id, tenant, "previous_response_id")
        items = responses_convert.input_items(body)
        conversation = (previous.conversation if previous else []) + items
        key = responses_convert.cache_key(body, previous)
        chat = responses_convert.to_chat(body, conversation, key)
        tools = bool(chat.tools) and chat.tool_choice != "none"

        def stored(response: dict) -> None:
            if body.store:
                state.responses.put(response["id"], Stored(tenant, response, items, conversation + response["output"], key))

        return await _complete(state, engine, chat, [convert.chat_prompt(chat, engine.tokenizer)], request, tenant,
                               "/v1/responses", lambda prompt_len, n: ResponseRender(
                                   engine.info.name, prompt_len, engine.tokenizer, tools, body, stored))

    @app.get("/v1/responses/{response_id}", responses=RESPONSES["response"])
    async def get_response(response_id: str, tenant: str = Depends(auth)):
        return state.responses.get(response_id, tenant).response

    @app.delete("/v1/responses/{response_id}", responses=RESPONSES["response_deleted"])
    async def delete_response(response_id: str, tenant: str = Depends(auth)):
        state.responses.delete(response_id, tenant)
        return {"id": response_id, "object": "response", "deleted": True}

    @app.get("/v1/responses/{response_id}/input_items", responses=RESPONSES["input_items"])
    async def response_input_items(response_id: str, tenant: str = Depends(auth)):
        items = state.responses.get(response_id, tenant).input_items
        return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
                "last_id": items[-1]["id"] if items else None, "has_more": False}

    @app.post("/v1/messages", responses=RESPONSES["messages"])
    async def messages(body: MessagesRequest, request: Request, tenant: str = Depends(auth_anthropic)):
        engine = state.ready()
        _check_model(engine, body.model)
        chat = anthropic_convert.to_chat(body)
        tools = bool(chat.tools) and chat.tool_choice != "none"
        return await _complete(state, engine, chat, [convert.chat_prompt(chat, engine.tokenizer)], request, tenant,
                               "/v1/messages", lambda prompt_len, n: Message(engine.info.name, prompt_len, tools))

    @app.post("/v1/messages/count_tokens", responses=RESPONSES["count_tokens"])
    async def count_tokens(body: CountTokensRequest, tenant: str = Depends(auth_anthropic)):
        engine = state.ready()
        _check_model(engine, body.model)
        return {"input_tokens": len(convert.chat_prompt(anthropic_convert.to_chat(body), engine.tokenizer))}

    @app.post("/v1/sessions", responses=RESPONSES["session"])
    async def create_session(tenant: str = Depends(auth)):
        """A session with a server-generated, unguessable id (client-named ids are created on first use)."""
        return session_info(await state.ready().create_session(tenant=tenant))

    @app.get("/v1/sessions/{session_id}", responses=RESPONSES["session"])
    async def get_session(session_id: str, tenant: str = Depends(auth)):
        return session_info(await state.ready().session_info(session_id, tenant))

    @app.delete("/v1/sessions/{session_id}", responses=RESPONSES["session_deleted"])
    async def delete_session(session_id: str, tenant: str = Depends(auth)):
        await state.ready().close_session(session_id, tenant)
        return {"id": session_id, "object": "session.deleted", "deleted": True}

    return app


async def _model_card(engine: Engine) -> dict:
    info = engine.info
    # the live configuration, as an extension field the OpenAI clients ignore
    live = {"device": info.device, "dtype": info.dtype, "weights": info.quantization,
            "weights_reason": info.quantization_reason, "decode_path": (await engine.health())["decode_path"]}
    return {"id": info.name, "object": "model", "created": 0, "owned_by": "kakeya", "max_model_len": info.max_context,
            "kakeya": live}


def _check_model(engine: Engine, model: Optional[str]) -> None:
    if model is not None and model != engine.info.name:
        raise ModelNotFound(f"the model '{model}' does not exist; this server serves '{engine.info.name}'", "model")


def _openai(body: convert.Body, engine: Engine, chat: bool) -> Callable[[int, int], Completion]:
    parse_tools = chat and bool(body.tools) and body.tool_choice != "none"
    return lambda prompt_len, n: Completion(chat, engine.info.name, prompt_len, n, engine.tokenizer, parse_tools,
                                            body.num_logprobs is not None, body.return_token_ids)


async def _complete(state: ServerState, engine: Engine, body: convert.Body, prompts: list[list[int]], request: Request,
                    tenant: str, endpoint: str, render: Callable[[int, int], Any]):
    """Choices for each prompt (a batch on /v1/completions), `n` each, in OpenAI's order:
    choice index = prompt index × n + j; `render(prompt_len, n)` shapes them for the endpoint's API."""
    chat = endpoint != "/v1/completions"
    t0 = time.perf_counter()

    def record(ends: list[ChoiceEnd], status: int = 200, reason: Optional[str] = None) -> None:
        request.scope.setdefault("state", {})[COUNTED] = True
        firsts = [e.first_token_at for e in ends if e.first_token_at]
        reason = reason or (ends[0].finish_reason if ends else "error")
        state.metrics.observe_request(endpoint, status, reason, prompt_tokens, sum(e.completion_tokens for e in ends),
                                      (min(firsts) - t0) if firsts else None, time.perf_counter() - t0,
                                      [g for e in ends for g in e.token_gaps], [e.timings for e in ends if e.timings],
                                      (prompt_tokens * body.n, sum(e.cached_tokens for e in ends)) if ends else (0, 0))

    prompt_tokens = sum(len(p) for p in prompts)
    streams = await _admit(engine, convert.submissions(body, prompts, chat, request.headers, tenant, engine.limits,
                                                       engine.tokenizer))  # refusals: CountRefusals
    # which replica served it, in a cluster (`kakeya cluster`): the owner of a session's KV
    replicas = sorted({r for s in streams if (r := getattr(s, "replica", None))})
    headers = {"x-kakeya-replica": ",".join(replicas)} if replicas else None
    out = render(prompt_tokens, len(streams))
    choices = [run_choice(s, engine.tokenizer, body.stop_list) for s in streams]

    echo = [engine.tokenizer.decode(p) if not chat and body.echo else "" for p in prompts for _ in range(body.n)]
    if not body.stream:
        try:
            response, ends = await _unless_disconnected(request, out.collect(choices, echo))
        except _ClientGone:
            record([], 499, "abort")  # nginx's "client closed request": nobody reads this response
            return Response(status_code=499)
        finally:
            for s in streams:
                s.cancel()
        if any(e.finish_reason == "abort" for e in ends):  # aborted by the server (shutdown), not by the client
            record(ends, 503)
            raise ShuttingDown("the server shut down before the request finished; retry it")
        record(ends)
        return JSONResponse(response, headers=headers)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events():
        try:
            async for event in out.stream(choices, include_usage, record, echo):
                yield event
        except (asyncio.CancelledError, GeneratorExit):  # the client went away mid-stream
            record([], 200, "abort")
            raise
        except Exception as e:  # noqa: BLE001 - after headers are sent, errors travel in-band
            record([], getattr(e, "http_status", 500))
            yield out.error_event(e)
        if out.last_event is not None:
            yield out.last_event

    # LF LF between events: many hand-written clients split the stream on "\n\n"
    return _Events(events(), streams, ping=state.config.keepalive_seconds, sep="\n", headers=headers)


async def _admit(engine: Engine, subs: list[Submission]) -> list[Stream]:
    """Admit every choice before any header is sent, so that a bad request is a 400, a busy session
    a 409 and a full queue a 429 — never a broken stream."""
    if subs[0].sampling.grammar is not None:
        await engine.prepare_grammar(subs[0].sampling.grammar)
    return await engine.add_all(subs)


class _ClientGone(Exception):
    pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (which aborts its engine requests) if the client disconnects."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise _ClientGone()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class _Events(EventSourceResponse):
    """SSE whose engine requests are aborted however the response ends, even if the body
    generator never started (a client that left right after the headers)."""

    def __init__(self, content, streams: list[Stream], **kwargs):
        super().__init__(content, **kwargs)
        self.streams = streams

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for s in self.streams:
                s.cancel()
