"""Request handles and results: what `Engine.submit` gives back, and how text reaches the caller.

A `RequestHandle` streams text deltas to a plain thread (`for d in h`) or to asyncio
(`async for d in h`), then gives the `GenerationResult`. The engine thread pushes into it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
from dataclasses import dataclass


class EngineClosedError(RuntimeError):
    """The engine is shutting down or stopped; the request was not (or not fully) served."""


class EngineBusyError(RuntimeError):
    """Too many requests are waiting; try again later."""


@dataclass
class GenerationResult:
    text: str  # the answer: cut at the first stop string, surrounding whitespace stripped
    token_ids: list[int]  # generated tokens, without the stop token
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int  # prompt positions: text tokens plus image vectors
    completion_tokens: int  # sampled tokens, a stop token included
    cached_tokens: int  # prompt positions resumed from the prefix cache


class RequestHandle:
    """One submitted request: iterate it (sync or async) for text deltas, then call `result()`."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._deltas: collections.deque[str] = collections.deque()
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        self._done = False
        self._cancelled = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    # ---- engine side ------------------------------------------------------------------------
    def _push(self, delta: str | None = None, result: GenerationResult | None = None,
              error: BaseException | None = None) -> None:
        with self._lock:
            if self._done:
                return
            if delta:
                self._deltas.append(delta)
            if result is not None or error is not None:
                self._result, self._error, self._done = result, error, True
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
                pass

    # ---- consumer side ----------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._done

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Stop generating at the next step (e.g. the client went away); the result says "cancelled"."""
        self._cancelled = True

    def _next(self):
        """(delta, None) | (None, final) where final is the result or the error; caller holds the lock."""
        if self._deltas:
            return self._deltas.popleft(), None
        if self._done:
            return None, (self._error or self._result)
        return None, None

    def __iter__(self):
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._deltas or self._done)
                delta, final = self._next()
            if delta is not None:
                yield delta
            elif isinstance(final, BaseException):
                raise final
            else:
                return

    async def __aiter__(self):
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                delta, final = self._next()
                future = None
                if delta is None and final is None:
                    future = loop.create_future()
                    self._waiters.append((loop, future))
            if future is not None:
                await future
            elif delta is not None:
                yield delta
            elif isinstance(final, BaseException):
                raise final
            else:
                return

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Block until the request is done; raises its error. Deltas not iterated are skipped, not lost:
        the result holds the whole text."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._done, timeout):
                raise TimeoutError(f"request {self.id} not done after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    async def aresult(self) -> GenerationResult:
        async for _ in self:
            pass
        return self.result(timeout=0)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)

