"""The OpenAI-compatible HTTP API over the batching engine (FastAPI).

Routes: `POST /v1/chat/completions` (streaming SSE or not; see `requests.py` for what a request may
hold), `POST /v1/completions` (plain text continued as it is, no chat template), `GET /v1/models`,
`GET /metrics` (Prometheus; see metrics.py, which also writes the access log), `GET /v1/models/{id}`, `GET /health`. With an API key, `/v1/*` needs
`Authorization: Bearer <key>`. Every error is a 4xx/5xx JSON body in the OpenAI shape. Request work
that costs CPU (image decoding, tokenization) runs in worker threads; the engine's own thread runs
the model, so the event loop stays free to serve many concurrent connections.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from visualrwkv.engine.engine import ChatPrompt, Engine, EngineBusyError, EngineClosedError, GenerationResult
from visualrwkv.serve.errors import APIError, error_body
from visualrwkv.serve.json_body import decode_json_body
from visualrwkv.serve.metrics import Metrics
from visualrwkv.serve.requests import Limits, parse_chat_request, parse_completion_request


@dataclass
class ServerSettings:
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    shutdown_timeout: float = 30.0  # seconds the engine may take to finish in-flight requests on shutdown


def create_app(engine: Engine, settings: ServerSettings, *, close_engine_on_shutdown: bool = True) -> FastAPI:
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn has already waited for in-flight connections; whatever is left gets a clean error
        if close_engine_on_shutdown:
            await run_in_threadpool(engine.close, settings.shutdown_timeout)

    app = FastAPI(title="visualrwkv", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    metrics = Metrics(engine)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        metrics.failed(request.url.path, exc.status, exc.message)
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"no route {request.url.path}",
                   405: f"method {request.method} not allowed on {request.url.path}"}
        return JSONResponse(error_body(exc.status_code, message.get(exc.status_code, str(exc.detail))),
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return JSONResponse(error_body(500, f"internal error: {type(exc).__name__}: {exc}"), status_code=500)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "incorrect API key", code="invalid_api_key")

    def model_card() -> dict:
        return {"id": settings.model_name, "object": "model", "created": created, "owned_by": "visualrwkv"}

    @app.get("/health")
    async def health():
        stats = engine.stats()
        return {"status": "ok", "model": settings.model_name, "running": stats.running, "waiting": stats.waiting}

    @app.get("/metrics")
    async def prometheus_metrics():
        content, media_type = metrics.render()
        return Response(content, media_type=media_type)

    @app.get("/v1/models")
    async def list_models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str, request: Request):
        authorize(request)
        if model_id != settings.model_name:
            raise APIError(404, f"the model {model_id!r} does not exist; this server serves {settings.model_name!r}",
                           "model", "model_not_found")
        return model_card()

    def submit(prompt, params, field_name):
        try:
            return engine.submit(prompt, params)
        except ValueError as e:  # prompt or max_tokens above the limits
            raise APIError(400, str(e), field_name if "prompt" in str(e) else None) from None
        except EngineBusyError as e:
            raise APIError(429, str(e)) from None
        except EngineClosedError as e:
            raise APIError(503, str(e)) from None

    async def respond(http_request: Request, handle, request, kind: str, choice, route: str, start: float):
        """The response to a submitted request: SSE chunks, or the whole answer once it is done."""
        completion_id = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + secrets.token_hex(12)
        if request.stream:
            def done(first_token, result):
                metrics.finished(route, start, first_token, result)

            return StreamingResponse(_sse(handle, request.include_usage, completion_id, settings.model_name, kind,
                                          done), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            result = await _result_unless_disconnected(http_request, handle)
        except EngineClosedError as e:
            raise APIError(503, str(e)) from None
        metrics.finished(route, start, None, result)
        return {"id": completion_id, "object": kind, "created": int(time.time()), "model": settings.model_name,
                "system_fingerprint": None, "choices": [{**choice(result.text), "finish_reason": result.finish_reason,
                                                         "logprobs": None}],
                "usage": _usage(result)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        start = time.perf_counter()
        authorize(request)
        body = await _read_json(request, settings.max_body_bytes)
        chat = await run_in_threadpool(parse_chat_request, body, settings.model_name, settings.limits,
                                       engine.model.max_images)
        try:
            prompt = await run_in_threadpool(engine.build_prompt, chat.question, chat.images, chat.history)
        except ValueError as e:  # a bad conversation
            raise APIError(400, str(e), "messages") from None
        handle = submit(prompt, chat.params, "messages")
        return await respond(request, handle, chat, "chat.completion",
                             lambda text: {"index": 0, "message": {"role": "assistant", "content": text}},
                             "/v1/chat/completions", start)

    @app.post("/v1/completions")
    async def completions(request: Request):
        start = time.perf_counter()
        authorize(request)
        body = await _read_json(request, settings.max_body_bytes)
        plain = parse_completion_request(body, settings.model_name)
        ids = await run_in_threadpool(engine.tokenizer.encode, plain.prompt)
        handle = submit(ChatPrompt(ids, None, []), plain.params, "prompt")
        return await respond(request, handle, plain, "text_completion", lambda text: {"index": 0, "text": text},
                             "/v1/completions", start)

    return app


async def _read_json(request: Request, max_bytes: int):
    """The JSON body, refusing more than `max_bytes` before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"the request body is {declared} bytes, above the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise APIError(413, f"the request body is above the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return decode_json_body(b"".join(chunks))


async def _result_unless_disconnected(request: Request, handle) -> GenerationResult:
    """The request's result; a client that goes away first cancels it, which frees its batch row at
    the next engine step (nobody reads the response then)."""
    result = asyncio.ensure_future(handle.aresult())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not result.done():
            handle.cancel()
    return await result


async def _disconnected(request: Request) -> None:
    """Returns when the client has closed the connection (the body has been read: nothing else comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _usage(result: GenerationResult) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": result.cached_tokens}}


async def _sse(handle, include_usage: bool, completion_id: str, model: str, kind: str, done):
    """OpenAI chunks: (chat: the role,) the content deltas, the finish reason, optionally usage, then [DONE]."""
    created = int(time.time())
    chat = kind == "chat.completion"

    def event(choices: list, **extra) -> str:
        chunk = {"id": completion_id, "object": "chat.completion.chunk" if chat else "text_completion",
                 "created": created, "model": model, "system_fingerprint": None, "choices": choices, **extra}
        if include_usage and "usage" not in extra:
            chunk["usage"] = None
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    def delta(content: dict | str, finish_reason=None) -> list:
        part = {"delta": content} if chat else {"text": content}
        return [{"index": 0, **part, "finish_reason": finish_reason, "logprobs": None}]

    try:
        if chat:
            yield event(delta({"role": "assistant", "content": ""}))
        first_token = None
        try:
            async for text in handle:
                first_token = first_token or time.perf_counter()
                yield event(delta({"content": text} if chat else text))
            result = handle.result(timeout=0)
            done(first_token, result)
            yield event(delta({} if chat else "", result.finish_reason))
            if include_usage:
                yield event([], usage=_usage(result))
        except EngineClosedError as e:
            yield f"data: {json.dumps(error_body(503, str(e)))}\n\n"
        except Exception as e:  # noqa: BLE001 - the status line is sent already: report in the stream
            yield f"data: {json.dumps(error_body(500, f'internal error: {type(e).__name__}: {e}'))}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        # the client went away (or we are done): stop spending steps on this request
        handle.cancel()
