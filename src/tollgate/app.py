"""ASGI entry point: authenticate, parse, call the chat domain, shape the response."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
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

from tollgate.auth import Authenticator, JwtConfig, safety_identifier
from tollgate.budget import DEFAULT_PLAN, Payer
from tollgate.cache import (
    CACHE_HEADER,
    CACHE_HEADER_HIT,
    chat_wants_cache,
    completion_wants_cache,
)
from tollgate.chat import ChatService, config_from_settings
from tollgate.errors import GatewayError
from tollgate.observability import CostRecorder
from tollgate.ports import BudgetAlerts, ConversationStore, ReplyCache, RequestRegistry, UsageStore
from tollgate.request_ids import RequestIds
from tollgate.settings import Settings, get_settings
from tollgate.stream import Outcome, ReplyStream
from tollgate.wire import sse
from tollgate.wire.body import MAX_BODY_BYTES, BodyTimeout, body_too_large
from tollgate.wire.chat import chat_frames, conversation_json, parse_chat_request, usage_json
from tollgate.wire.openai import (
    ERROR_TYPES,
    CompletionEncoder,
    billing_parameters,
    collect,
    completion_body,
    failure_body,
    failure_status,
    openai_error_body,
    parse_completion_request,
)
from tollgate.wire.responses import ResponseEncoder, parse_responses_request, response_body

STATIC_DIR = Path(__file__).resolve().parent / "static"
OPENAPI_DOCUMENT = Path(__file__).resolve().parent / "data" / "openapi.json"
log = logging.getLogger("tollgate.app")


@dataclass(slots=True)
class Dependencies:
    service: ChatService
    authenticator: Authenticator
    sse_keepalive_s: float = 15.0
    body_read_timeout_s: float = 10.0
    # Keys the safety_identifier sent upstream; None sends none (no key configured)
    safety_key: bytes | None = None

    def safety_identifier(self, user_id: str) -> str | None:
        return None if self.safety_key is None else safety_identifier(self.safety_key, user_id)


def error_response(error: GatewayError) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": error.code, "message": error.message, **error.details()}},
        status_code=error.status,
        headers=error.headers(),
    )


class SSEResponse:
    """Streams a reply; a client that goes away stops it, and it is always settled."""

    def __init__(
        self,
        stream: ReplyStream,
        frames: AsyncGenerator[bytes, None] | None = None,
        *,
        keepalive_s: float = 15.0,
    ) -> None:
        self._stream = stream
        self._frames = frames if frames is not None else chat_frames(stream)
        self._keepalive_s = keepalive_s
        self._sending = asyncio.Lock()
        self._last_sent = 0.0

    async def _send(self, send: Send, body: bytes, *, more: bool = True) -> None:
        async with self._sending:
            await send({"type": "http.response.body", "body": body, "more_body": more})
            self._last_sent = time.monotonic()

    async def _keep_alive(self, send: Send) -> None:
        """An SSE comment whenever nothing was sent for a while (a reasoning model thinking)."""
        while True:
            idle = time.monotonic() - self._last_sent
            if idle < self._keepalive_s:
                await asyncio.sleep(self._keepalive_s - idle)
                continue
            await self._send(send, sse.KEEPALIVE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self._stream
        headers = [
            (b"content-type", b"text/event-stream"),  # SSE is UTF-8 by definition
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"x-request-id", stream.request_id.encode()),
        ]
        if stream.cached:
            headers.append((CACHE_HEADER.encode(), CACHE_HEADER_HIT.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self._last_sent = time.monotonic()
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(stop_on_disconnect(stream, receive))
        keeper = loop.create_task(self._keep_alive(send))
        frames = self._frames
        try:
            async for frame in frames:
                await self._send(send, frame)
            keeper.cancel()
            await self._send(send, b"", more=False)
        finally:
            watcher.cancel()
            keeper.cancel()
            # Settle first, shielded: an await here after a disconnect is cancelled too, and
            # the settlement must still run to its end.
            await asyncio.shield(stream.aclose())
            await frames.aclose()


async def stop_on_disconnect(stream: ReplyStream, receive: Receive) -> None:
    """Stop `stream` (aborting upstream) when the client goes away before it ends."""
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.stop("client_disconnected")


class CompletionResponse:
    """A non-stream /v1 reply: collected from upstream's stream, sent whole at the end.

    A client that leaves meanwhile stops the stream, so upstream stops generating (an SDK
    that times out and retries would otherwise pay for every abandoned generation).
    """

    def __init__(
        self,
        stream: ReplyStream,
        body: Callable[[ReplyStream, Outcome], dict[str, Any]] = completion_body,
    ) -> None:
        self._stream = stream
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self._stream
        watcher = asyncio.get_running_loop().create_task(stop_on_disconnect(stream, receive))
        try:
            outcome = await collect(stream)
        finally:
            watcher.cancel()
            await asyncio.shield(stream.aclose())
        headers = {"x-request-id": stream.request_id}
        if stream.cached:
            headers[CACHE_HEADER] = CACHE_HEADER_HIT
        failure = outcome.failure()
        if failure is None:
            response = JSONResponse(self._body(stream, outcome), headers=headers)
        else:
            code, message = failure
            response = JSONResponse(
                failure_body(code, message), status_code=failure_status(code), headers=headers
            )
        await response(scope, receive, send)


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


@dataclass(slots=True)
class Stores:
    usage: UsageStore
    requests: RequestRegistry
    conversations: ConversationStore
    replies: ReplyCache


def dynamodb_stores(settings: Settings) -> Stores:
    from tollgate.adapters.aws import dynamodb_client
    from tollgate.adapters.cache_store import DynamoReplyCache
    from tollgate.adapters.conversation_store import DynamoConversationStore
    from tollgate.adapters.usage_store import (
        DynamoRequestRegistry,
        DynamoUsageStore,
    )

    client = dynamodb_client(settings.dynamodb_timeout_s, settings.dynamodb_max_attempts)
    return Stores(
        usage=DynamoUsageStore(settings.usage_table, client),
        requests=DynamoRequestRegistry(settings.usage_table, client),
        conversations=DynamoConversationStore(
            settings.conversations_table, client, ttl_days=settings.conversation_ttl_days
        ),
        replies=DynamoReplyCache(settings.conversations_table, client),
    )


def memory_stores(settings: Settings) -> Stores:
    from tollgate.adapters.memory_store import (
        MemoryConversationStore,
        MemoryReplyCache,
        MemoryRequestRegistry,
        MemoryUsageStore,
    )

    return Stores(
        MemoryUsageStore(),
        MemoryRequestRegistry(),
        MemoryConversationStore(ttl_days=settings.conversation_ttl_days),
        MemoryReplyCache(),
    )


def request_ids_keyed(key: str | None) -> RequestIds:
    """Request ids signed with the deployment's key; without one (a local run with neither a
    key nor a JWT secret) a key of this process only, so cancels reach this instance only."""
    if not key:
        log.warning("no REQUEST_ID_KEY: request ids are signed with a key of this process only")
        return RequestIds(secrets.token_bytes(32))
    return RequestIds(hashlib.sha256(key.encode()).digest())


def budget_alerts(settings: Settings, recorder: CostRecorder) -> BudgetAlerts | None:
    """Team and global alerts to ALERT_TOPIC_ARN; their once-only marks live in the usage table."""
    if not settings.alert_topic_arn or settings.store_backend != "dynamodb":
        return None
    from tollgate.adapters.aws import dynamodb_client
    from tollgate.adapters.budget_alerts import AlertLatch, BudgetAlertNotifier, SnsNotifier

    client = dynamodb_client(settings.dynamodb_timeout_s, settings.dynamodb_max_attempts)
    return BudgetAlertNotifier(
        AlertLatch(settings.usage_table, client), SnsNotifier(settings.alert_topic_arn), recorder
    )


def build_dependencies(
    settings: Settings,
    *,
    recorder: CostRecorder | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Dependencies:
    """The real adapters: DynamoDB, OpenAI, tiktoken, the price table, prompts/."""
    from openai import AsyncOpenAI

    from tollgate.adapters.secrets import FixedSecret, RotatingSecret, resolve_secret
    from tollgate.adapters.tokenizer import token_counter
    from tollgate.adapters.upstream import OpenAIUpstream
    from tollgate.pricing import price_table
    from tollgate.prompts import PromptLibrary

    # No key yet (an empty secret, an empty variable) is not a start-up failure: /health
    # answers and chat gets 502 upstream_misconfigured until the key appears.
    api_key: RotatingSecret | FixedSecret = FixedSecret(settings.openai_api_key)
    if not settings.openai_api_key and settings.openai_api_key_secret_arn:
        api_key = RotatingSecret(
            settings.openai_api_key_secret_arn, max_age_s=settings.secret_max_age_s
        )
    client = AsyncOpenAI(
        # The SDK refuses an empty key; this placeholder is never sent (see OpenAIUpstream).
        api_key=api_key.initial() or "not-configured",
        base_url=settings.openai_base_url,
        timeout=settings.openai_timeout_s,
        max_retries=0,
    )
    jwt_secret = settings.jwt_secret or resolve_secret(settings.jwt_secret_arn)
    request_id_key = (
        settings.request_id_key or resolve_secret(settings.request_id_key_secret_arn) or jwt_secret
    )
    stores = (
        memory_stores(settings) if settings.store_backend == "memory" else dynamodb_stores(settings)
    )
    recorder = recorder or CostRecorder()
    prices = price_table(settings.price_table_path)
    service = ChatService(
        config_from_settings(settings),
        usage=stores.usage,
        requests=stores.requests,
        conversations=stores.conversations,
        replies=stores.replies,
        upstream=OpenAIUpstream(
            client,
            attempt_timeout_s=settings.openai_timeout_s,
            first_byte_timeout_s=settings.upstream_first_byte_timeout_s,
            cap_parameter=settings.upstream_cap_parameter,
            is_reasoning=prices.is_reasoning,
            api_key=api_key,
        ),
        tokens=token_counter(settings.price_table_path),
        prices=prices,
        prompts=PromptLibrary.load(Path(settings.prompts_dir) if settings.prompts_dir else None),
        recorder=recorder,
        request_ids=request_ids_keyed(request_id_key),
        **({"clock": clock} if clock else {}),
        # The encodings (~0.3 s of CPU) load on first need, in a thread, after the first
        # reply streamed: a cold instance's first requests reserve byte bounds instead.
        lazy_encoding=True,
        alerts=budget_alerts(settings, recorder),
    )
    authenticator = Authenticator(
        settings.auth_mode,
        JwtConfig(
            secret=jwt_secret,
            jwks_url=settings.jwks_url,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            plan_claim=settings.plan_claim,
            team_claim=settings.team_claim,
            max_lifetime_s=settings.jwt_max_lifetime_s,
        ),
    )
    safety_key = settings.safety_id_key or jwt_secret
    return Dependencies(
        service=service,
        authenticator=authenticator,
        sse_keepalive_s=settings.sse_keepalive_s,
        body_read_timeout_s=settings.body_read_timeout_s,
        safety_key=safety_key.encode() if safety_key else None,
    )


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
