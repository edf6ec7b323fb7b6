"""The HTTP app (FastAPI on uvicorn): the OpenAI-compatible API, a user's own conversations, the admin endpoints,
/metrics, /health and the web chat page.

Keys: /v1/* takes the chat key, /admin/* the admin key, both as `Authorization: Bearer ...`, compared in constant
time; neither is ever logged or stored. Every read of conversations is scoped to the user the request names, and a
request is always served by the adapter of its own user (or the shared one), whatever it asks for.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Optional

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from sdpo_interactions.live import protocol, telemetry
from sdpo_interactions.live.history import export_records
from sdpo_interactions.live.protocol import ApiError
from sdpo_interactions.live.service import Chat, LiveService
from sdpo_interactions.live.store import new_id
from sdpo_interactions.run_files import jsonl_text

logger = logging.getLogger(__name__)
WEB = resources.files("sdpo_interactions.live") / "web"


def _bearer(request: Request, expected: str) -> None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer ") or not header[7:].strip():
        raise ApiError(401, "Missing bearer key: send Authorization: Bearer <key>", code="invalid_api_key")
    if not hmac.compare_digest(header[7:].strip().encode(), expected.encode()):
        raise ApiError(401, "Invalid bearer key", code="invalid_api_key")


def _user(user: Optional[str]) -> str:
    user = "default" if user is None else user
    if not user.strip() or len(user) > protocol.MAX_USER_ID_CHARS or not user.isprintable():
        raise ApiError(400, f"user must be 1 to {protocol.MAX_USER_ID_CHARS} printable characters", param="user",
                       code="invalid_user")
    return user


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over `limit` bytes (before it is all read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"Request body of {declared} bytes is over the limit of {limit}", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"Request body is over the limit of {limit} bytes", code="request_too_large")
    return bytes(body)


def create_app(service: LiveService) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        await run_in_threadpool(service.stop)

    app = FastAPI(title="SDPO live", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    _handlers(app, service)
    _chat_routes(app, service)
    _user_routes(app, service)
    _admin_routes(app, service)
    app.mount("/web", StaticFiles(directory=str(WEB)), name="web")
    return app


def _handlers(app: FastAPI, service: LiveService) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return JSONResponse(ApiError(err.status_code, str(err.detail), code="http_error").body(),
                            status_code=err.status_code)

    @app.middleware("http")
    async def count(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        service.telemetry.request(getattr(route, "path", "unmatched"), response.status_code,
                                  time.perf_counter() - started)
        return response

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(await run_in_threadpool(service.telemetry.render), media_type=telemetry.CONTENT_TYPE)

    @app.get("/")
    async def page():
        return FileResponse(str(WEB / "index.html"))


def _chat_routes(app: FastAPI, service: LiveService) -> None:
    def chat_key(request: Request) -> None:
        _bearer(request, service.keys.api_key)

    @app.get("/v1/models", dependencies=[Depends(chat_key)])
    async def models():
        return {"object": "list", "data": [_model_card(service)]}

    @app.get("/v1/models/{model:path}", dependencies=[Depends(chat_key)])
    async def model(model: str):
        if model != service.args.served_model_name:
            raise ApiError(404, f"The model {model!r} does not exist", param="model", code="model_not_found")
        return _model_card(service)

    @app.post("/v1/chat/completions", dependencies=[Depends(chat_key)])
    async def chat_completions(request: Request):
        started = time.perf_counter()
        chat = await run_in_threadpool(service.prepare, await read_body(request, service.args.max_request_bytes))
        if chat.stream:
            return StreamingResponse(_stream(service, chat, started), media_type="text/event-stream")
        completion, served = await asyncio.shield(asyncio.ensure_future(_complete(service, chat, None, started)))
        usage = protocol.usage(completion.prompt_tokens, len(completion.token_ids))
        return protocol.completion_body(service.args.served_model_name, completion.text, completion.finish_reason,
                                        usage, served)


def _model_card(service: LiveService) -> dict:
    return {"id": service.args.served_model_name, "object": "model", "created": service.created,
            "owned_by": "sdpo-live"}


async def _complete(service: LiveService, chat: Chat, on_text, started: float):
    """Generate and store the answer; runs to the end even if the client goes away, so the answer is kept."""
    completion = await asyncio.wrap_future(service.submit(chat, on_text))
    served = await run_in_threadpool(service.record, chat, completion, time.perf_counter() - started)
    return completion, served


async def _stream(service: LiveService, chat: Chat, started: float):
    """OpenAI's server-sent events: the role, the text as it is sampled, the end with who wrote the answer."""
    loop, pieces = asyncio.get_running_loop(), asyncio.Queue()
    task = asyncio.ensure_future(_complete(service, chat, lambda d: loop.call_soon_threadsafe(pieces.put_nowait, d),
                                           started))
    task.add_done_callback(lambda _: pieces.put_nowait(None))
    chunk_id, name = f"chatcmpl-{new_id()}", service.args.served_model_name
    yield protocol.sse(protocol.chunk_body(chunk_id, name, {"role": "assistant", "content": ""}))
    while (piece := await pieces.get()) is not None:
        yield protocol.sse(protocol.chunk_body(chunk_id, name, {"content": piece}))
    try:
        completion, served = await asyncio.shield(task)
    except Exception as err:  # the headers are sent: the error travels as an event, as OpenAI sends one
        logger.exception("A streamed answer failed")
        yield protocol.sse(ApiError(500, f"Generation failed: {err}", kind="server_error").body())
        return
    yield protocol.sse(protocol.chunk_body(chunk_id, name, {}, completion.finish_reason, served))
    if chat.include_usage:
        yield protocol.sse(protocol.chunk_body(chunk_id, name, {}, served=served, usage=protocol.usage(
            completion.prompt_tokens, len(completion.token_ids))))
    yield protocol.sse("[DONE]")


def _user_routes(app: FastAPI, service: LiveService) -> None:
    def chat_key(request: Request) -> None:
        _bearer(request, service.keys.api_key)

    @app.get("/v1/me", dependencies=[Depends(chat_key)])
    async def me(user: Optional[str] = None):
        return await run_in_threadpool(service.me, _user(user))

    @app.get("/v1/conversations", dependencies=[Depends(chat_key)])
    async def conversations(user: Optional[str] = None):
        return {"data": await run_in_threadpool(service.conversations, _user(user))}

    @app.get("/v1/conversations/{conversation_id}", dependencies=[Depends(chat_key)])
    async def conversation(conversation_id: str, user: Optional[str] = None):
        return await run_in_threadpool(service.conversation, _user(user), conversation_id)


def _admin_routes(app: FastAPI, service: LiveService) -> None:
    def admin_key(request: Request) -> None:
        _bearer(request, service.keys.admin_key)

    @app.get("/admin/status", dependencies=[Depends(admin_key)])
    async def status():
        return await run_in_threadpool(service.status)

    @app.delete("/admin/users/{user_id:path}", dependencies=[Depends(admin_key)])
    async def delete_user(user_id: str):
        return {"deleted": await run_in_threadpool(service.delete_user, _user(user_id))}

    @app.get("/admin/export", dependencies=[Depends(admin_key)])
    async def export():
        records, skipped = await run_in_threadpool(export_records, service.store)
        return PlainTextResponse(jsonl_text(records), media_type="application/x-ndjson",
                                 headers={"X-Skipped-Branches": str(skipped)})
