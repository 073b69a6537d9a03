"""The door between the edges and the engine: what the HTTP app and a cluster's ingress call.

AsyncEngine (the engine thread in this process) and cluster.RemoteEngine (Ray Serve replicas)
both implement `Engine`; their streams implement `Stream`. The gRPC edge, which only a single
process serves, also uses AsyncEngine's token-level session methods (append_tokens).
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Optional, Protocol, Sequence, Union

from ..errors import EngineDead
from ..types import EngineResult, StepStats, Submission, TokenLogprob
from .validation import Limits

Token = tuple[int, Optional[TokenLogprob]]  # a generated token id and, if asked for, its logprob


class Stream(Protocol):
    """One admitted request: iterate for Tokens, then its EngineResult. cancel() queues the abort
    without waiting; abort() waits until the engine released the request (its session checked in)."""

    request_id: str
    result: Optional[EngineResult]

    def __aiter__(self) -> AsyncIterator[Union[Token, EngineResult]]: ...

    def cancel(self) -> None: ...

    async def abort(self) -> Optional[EngineResult]: ...


class Engine(Protocol):
    info: Any        # models.ModelInfo
    limits: Limits   # what requests are validated against (the engine validates; edges may show it)
    tokenizer: Any
    on_step: Optional[Callable[[StepStats], None]]

    @property
    def alive(self) -> bool: ...

    @property
    def num_running(self) -> int: ...

    @property
    def num_waiting(self) -> int: ...

    @property
    def num_sessions(self) -> int: ...

    @property
    def cache_bytes(self) -> int: ...

    def dead_error(self) -> EngineDead: ...

    async def health(self) -> dict: ...

    async def prepare_grammar(self, grammar: str) -> None: ...

    async def add_all(self, subs: Sequence[Submission]) -> list[Stream]:
        """Admit every submission or none: a refusal (invalid, queue full, session busy or missing)
        raises before any response, with nothing left admitted."""
        ...

    async def add(self, sub: Submission) -> Stream: ...  # add_all([sub])[0]

    async def create_session(self, eos_ids: Sequence[int] = (), label: str = "", tenant: str = "") -> Any: ...

    async def session_info(self, session_id: str, tenant: str = "") -> Any: ...

    async def close_session(self, session_id: str, tenant: str = "") -> None: ...

    async def abort_all(self) -> int: ...

    def shutdown(self, timeout: float = 10.0) -> None: ...
