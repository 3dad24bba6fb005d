"""ASGI entry point: authenticate, parse, call the chat domain, shape the response."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tollgate.asgi import CompletionResponse, SSEResponse
from tollgate.budget import DEFAULT_PLAN, Payer
from tollgate.cache import (
    CACHE_HEADER,
    chat_wants_cache,
    completion_wants_cache,
)
from tollgate.dependencies import Dependencies, build_dependencies
from tollgate.errors import GatewayError
from tollgate.settings import Settings, get_settings
from tollgate.wire.body import MAX_BODY_BYTES, BodyTimeout, body_too_large
from tollgate.wire.chat import conversation_json, parse_chat_request, usage_json
from tollgate.wire.openai import (
    ERROR_TYPES,
    CompletionEncoder,
    billing_parameters,
    openai_error_body,
    parse_completion_request,
)
from tollgate.wire.responses import ResponseEncoder, parse_responses_request, response_body

STATIC_DIR = Path(__file__).resolve().parent / "static"
OPENAPI_DOCUMENT = Path(__file__).resolve().parent / "data" / "openapi.json"
log = logging.getLogger("tollgate.app")


def error_response(error: GatewayError) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": error.code, "message": error.message, **error.details()}},
        status_code=error.status,
        headers=error.headers(),
    )


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise body_too_large()
    body = bytearray()
    timeout_s = deps(request).body_read_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise body_too_large()
    except TimeoutError as exc:
        raise BodyTimeout(f"the request body did not arrive within {timeout_s:g} s") from exc
    return bytes(body)


def deps(request: Request) -> Dependencies:
    dependencies: Dependencies = request.app.state.deps
    return dependencies


async def authenticate(request: Request) -> Payer:
    authenticator = deps(request).authenticator
    if authenticator.may_block:
        identity = await run_in_threadpool(authenticator.identify, request.headers)
    else:
        identity = authenticator.identify(request.headers)
    return Payer(identity.user_id, identity.plan or DEFAULT_PLAN, identity.team)


def authenticated(
    handler: Callable[[Request, Payer], Awaitable[Response | SSEResponse]],
) -> Callable[[Request], Awaitable[Any]]:
    async def endpoint(request: Request) -> Any:
        payer = await authenticate(request)
        return await handler(request, payer)

    endpoint.__name__ = handler.__name__
    return endpoint


@authenticated
async def post_chat(request: Request, payer: Payer) -> SSEResponse:
    chat_request = parse_chat_request(await read_body(request))
    stream = await deps(request).service.start(
        payer, chat_request, use_cache=chat_wants_cache(request.headers.get(CACHE_HEADER))
    )
    return SSEResponse(stream, keepalive_s=deps(request).sse_keepalive_s)


@authenticated
async def cancel_chat(request: Request, payer: Payer) -> Response:
    await deps(request).service.cancel(payer, request.path_params["request_id"])
    return JSONResponse({"request_id": request.path_params["request_id"]}, status_code=202)


@authenticated
async def get_usage(request: Request, payer: Payer) -> Response:
    return JSONResponse(usage_json(payer.plan, await deps(request).service.balances(payer)))


@authenticated
async def get_conversation(request: Request, payer: Payer) -> Response:
    view = await deps(request).service.conversation(
        payer.user_id, request.path_params["conversation_id"]
    )
    return JSONResponse(conversation_json(view))


@authenticated
async def delete_conversation(request: Request, payer: Payer) -> Response:
    await deps(request).service.delete_conversation(
        payer.user_id, request.path_params["conversation_id"]
    )
    return Response(status_code=204)


def openai_error_response(error: GatewayError) -> JSONResponse:
    return JSONResponse(openai_error_body(error), status_code=error.status, headers=error.headers())


async def post_completions(request: Request) -> Response | SSEResponse | CompletionResponse:
    """OpenAI-compatible: any OpenAI SDK can point its base_url here; errors in its shape."""
    try:
        dependencies = deps(request)
        payer = await authenticate(request)
        completion = parse_completion_request(await read_body(request))
        stream = await dependencies.service.start_completion(
            payer,
            completion.messages,
            model=completion.model,
            max_tokens=completion.max_tokens,
            extra=billing_parameters(
                completion.extra, dependencies.safety_identifier(payer.user_id)
            ),
            cache_body=(
                completion.body
                if completion_wants_cache(request.headers.get(CACHE_HEADER))
                else None
            ),
        )
    except GatewayError as error:
        return openai_error_response(error)
    if completion.stream:
        return SSEResponse(
            stream,
            CompletionEncoder(stream, completion.include_usage).frames(),
            keepalive_s=dependencies.sse_keepalive_s,
        )
    return CompletionResponse(stream)


async def post_responses(request: Request) -> Response | SSEResponse | CompletionResponse:
    """OpenAI's Responses API over Chat Completions upstream; the response id is
    `resp_<request id>`, and the request id cancels it through /chat/{id}/cancel."""
    try:
        dependencies = deps(request)
        payer = await authenticate(request)
        parsed = parse_responses_request(await read_body(request))
        stream = await dependencies.service.start_completion(
            payer,
            parsed.messages,
            model=parsed.model,
            max_tokens=parsed.max_tokens,
            extra=billing_parameters(parsed.extra, dependencies.safety_identifier(payer.user_id)),
        )
    except GatewayError as error:
        return openai_error_response(error)
    if parsed.stream:
        return SSEResponse(
            stream,
            ResponseEncoder(stream, parsed.echo).frames(),
            keepalive_s=dependencies.sse_keepalive_s,
        )
    return CompletionResponse(
        stream, lambda reply, outcome: response_body(reply, outcome, parsed.echo)
    )


async def list_models(request: Request) -> Response:
    try:
        await authenticate(request)
    except GatewayError as error:
        return openai_error_response(error)
    models = deps(request).service.config.model_chain
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": "tollgate"}
                for model in models
            ],
        }
    )


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def openapi(request: Request) -> Response:
    return FileResponse(OPENAPI_DOCUMENT, media_type="application/json")


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/")


def error_json(path: str, status: int, code: str, message: str) -> dict[str, Any]:
    """An error body in the shape of the endpoint's API: OpenAI's on /v1, ours elsewhere."""
    if is_openai_path(path):
        error_type = ERROR_TYPES.get(status, "api_error")
        return {"error": {"message": message, "type": error_type, "code": code, "param": None}}
    return {"error": {"code": code, "message": message}}


async def gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    if is_openai_path(request.url.path):
        return openai_error_response(exc)
    return error_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    return JSONResponse(
        error_json(request.url.path, exc.status_code, code, str(exc.detail)),
        status_code=exc.status_code,
        headers=exc.headers,
    )


class UnexpectedErrors:
    """The last line: an exception nothing else handled becomes a 500 in the endpoint's shape.

    Starlette's own last-resort handler re-raises after answering, and uvicorn then drops the
    keep-alive connection; here the connection stays usable. A client that left while its
    body was being read is not an error: there is nobody to answer, and nothing was charged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except ClientDisconnect:
            log.info("client disconnected before its request body arrived")
        except Exception:
            if started:
                raise  # half a response is out: only closing the connection can say it failed
            log.exception("unhandled error")
            body = error_json(scope["path"], 500, "internal", "internal error")
            await JSONResponse(body, status_code=500)(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    dependencies: Dependencies | None = None,
) -> Starlette:
    settings = settings or get_settings()
    resolved = dependencies or build_dependencies(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.deps = resolved
        yield

    middleware = []
    if settings.cors_allow_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_allow_origins),
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["authorization", "content-type", "x-end-user-id", CACHE_HEADER],
                expose_headers=["x-request-id", "retry-after", CACHE_HEADER],
                max_age=600,
            )
        )
    middleware.append(Middleware(UnexpectedErrors))
    routes = [
        Route("/", index, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/chat", post_chat, methods=["POST"]),
        Route("/chat/{request_id}/cancel", cancel_chat, methods=["POST"]),
        Route("/usage", get_usage, methods=["GET"]),
        Route("/conversations/{conversation_id}", get_conversation, methods=["GET"]),
        Route("/conversations/{conversation_id}", delete_conversation, methods=["DELETE"]),
        Route("/v1/chat/completions", post_completions, methods=["POST"]),
        Route("/v1/responses", post_responses, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            GatewayError: gateway_error,
            HTTPException: http_error,
        },
    )
