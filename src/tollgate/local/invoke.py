"""`make invoke EVENT=events/<file>.json`: a Lambda event through the real code, without Docker.

A function URL event (payload 2.0) becomes the HTTP request the Lambda Web Adapter would
send to the app: the method from `requestContext.http.method`, `rawPath`, `rawQueryString`,
the event's headers (its `cookies` joined into one `cookie` header), the body (base64-decoded
when `isBase64Encoded`), and the request context as JSON in `x-amzn-request-context` (plus
the invocation context in `x-amzn-lambda-context`). The adapter sends it over HTTP to
uvicorn, and so does this: the gateway runs here under uvicorn on 127.0.0.1 with the
in-memory store and the offline model server (unless OPENAI_BASE_URL or OPENAI_API_KEY /
STORE_BACKEND / AWS_ENDPOINT_URL_DYNAMODB say otherwise), and the streamed body is printed
as it arrives. A `Bearer <token>` placeholder is replaced by a development token.

Any other event (the aggregator's) runs through `make aggregate`'s path.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import uvicorn

from tollgate.local.run import PLACEHOLDER_API_KEY, development_token

TOKEN_PLACEHOLDER = "<token>"
REQUEST_CONTEXT_HEADER = "x-amzn-request-context"
LAMBDA_CONTEXT_HEADER = "x-amzn-lambda-context"
STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class AppRequest:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


def is_function_url_event(event: Mapping[str, Any]) -> bool:
    return event.get("version") == "2.0" and "http" in (event.get("requestContext") or {})


def lambda_context(request_id: str, function_name: str = "tollgate-local") -> dict[str, Any]:
    return {
        "request_id": request_id,
        "deadline": int(time.time() * 1000) + 180_000,
        "invoked_function_arn": f"arn:aws:lambda:us-east-1:000000000000:function:{function_name}",
        "env_config": {"function_name": function_name, "memory": 1024, "version": "$LATEST"},
    }


def app_request(event: Mapping[str, Any], *, base_path: str = "") -> AppRequest:
    """The request the Web Adapter sends to the app for a function URL event."""
    context = event["requestContext"]
    path = event.get("rawPath") or "/"
    if base_path and path.startswith(base_path):
        path = path[len(base_path) :] or "/"
    headers = [(name.lower(), str(value)) for name, value in (event.get("headers") or {}).items()]
    cookies = event.get("cookies") or []
    if cookies:
        headers = [(n, v) for n, v in headers if n != "cookie"] + [("cookie", "; ".join(cookies))]
    headers = [
        (n, v) for n, v in headers if n not in (REQUEST_CONTEXT_HEADER, LAMBDA_CONTEXT_HEADER)
    ]
    headers.append((REQUEST_CONTEXT_HEADER, json.dumps(context, separators=(",", ":"))))
    request_id = str(context.get("requestId") or uuid.uuid4())
    headers.append((LAMBDA_CONTEXT_HEADER, json.dumps(lambda_context(request_id))))
    raw_body = event.get("body") or ""
    body = base64.b64decode(raw_body) if event.get("isBase64Encoded") else raw_body.encode()
    return AppRequest(
        method=str(context["http"]["method"]).upper(),
        path=path,
        query=event.get("rawQueryString") or "",
        headers=headers,
        body=body,
    )


def with_token(request: AppRequest, token: str) -> AppRequest:
    headers = [(n, v.replace(TOKEN_PLACEHOLDER, token)) for n, v in request.headers]
    return AppRequest(request.method, request.path, request.query, headers, request.body)


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """`app` under uvicorn on a free 127.0.0.1 port, as run.sh serves it behind the adapter."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="invoke-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def local_overrides(env: Mapping[str, str]) -> dict[str, str]:
    """Settings `make run` would provide, for those the environment does not set."""
    values = {
        "usage_table": "tollgate-usage",
        "conversations_table": "tollgate-conversations",
        "store_backend": "dynamodb" if env.get("AWS_ENDPOINT_URL_DYNAMODB") else "memory",
    }
    if not (env.get("JWT_SECRET") or env.get("JWKS_URL") or env.get("JWT_SECRET_ARN")):
        values["jwt_secret"] = secrets.token_urlsafe(32)
    return {name: value for name, value in values.items() if not env.get(name.upper())}


@contextmanager
def model_endpoint(env: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """The offline model server's settings, unless the environment names a model endpoint."""
    if env.get("OPENAI_BASE_URL") or env.get("OPENAI_API_KEY"):
        yield {} if env.get("OPENAI_API_KEY") else {"openai_api_key": PLACEHOLDER_API_KEY}
        return
    from tollgate.local.offline_model import create_app

    with serve_app(create_app()) as url:
        yield {"openai_base_url": f"{url}/v1", "openai_api_key": PLACEHOLDER_API_KEY}


def invoke_function_url(event: Mapping[str, Any], *, out: IO[bytes], err: IO[str]) -> int:
    """Serve the gateway, send it the adapter's request for `event`, print what it streams."""
    from tollgate.app import create_app
    from tollgate.dependencies import build_dependencies
    from tollgate.observability import CostRecorder, build_logger
    from tollgate.settings import Settings

    env = dict(os.environ)
    with model_endpoint(env) as model:
        settings = Settings(**local_overrides(env), **model)
        # The app's log lines go to stderr, so stdout is the response body alone.
        recorder = CostRecorder(logger=build_logger(err), stream=err)
        app = create_app(settings, dependencies=build_dependencies(settings, recorder=recorder))
        request = app_request(event, base_path=env.get("AWS_LWA_REMOVE_BASE_PATH", ""))
        if settings.jwt_secret:
            token = development_token(
                settings.jwt_secret, issuer=settings.jwt_issuer, audience=settings.jwt_audience
            )
            request = with_token(request, token)
        with (
            serve_app(app) as url,
            httpx.Client(base_url=url, timeout=None) as client,
            client.stream(
                request.method, request.target, headers=request.headers, content=request.body
            ) as response,
        ):
            err.write(f"HTTP {response.status_code}\n")
            for name, value in response.headers.items():
                err.write(f"{name}: {value}\n")
            err.flush()
            for chunk in response.iter_raw():
                out.write(chunk)
                out.flush()
    return 0 if response.status_code < 500 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--event", type=Path, required=True, help="Lambda event JSON file")
    parser.add_argument("--as-of", help="ISO time for a scheduled aggregator event")
    args = parser.parse_args(argv)
    event = json.loads(args.event.read_text(encoding="utf-8"))
    if isinstance(event, dict) and is_function_url_event(event):
        return invoke_function_url(event, out=sys.stdout.buffer, err=sys.stderr)
    from tollgate.local import aggregate

    as_of = ["--as-of", args.as_of] if args.as_of else []
    return aggregate.main(["--event", str(args.event), *as_of])


if __name__ == "__main__":
    raise SystemExit(main())
