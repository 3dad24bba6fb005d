"""tollgate-chat: a terminal client that streams replies from the gateway's /chat endpoint.

Standard library HTTP only; with `--iam` requests are signed with SigV4 by botocore (a
runtime dependency through boto3) for a function URL that uses AWS_IAM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.client import HTTPException, HTTPResponse
from typing import IO, Any, TextIO

DEFAULT_URL = "http://127.0.0.1:8080"
READ_TIMEOUT_S = 180.0
END_USER_HEADER = "X-End-User-Id"
EXIT_OK = 0
EXIT_GATEWAY_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Signer = Callable[[str, str, Mapping[str, str], bytes | None], dict[str, str]]


class GatewayError(Exception):
    """A JSON error answer (`{"error": {"code", "message"}}`) or an unreachable gateway."""

    def __init__(
        self, status: int | None, code: str, message: str, retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def describe(self) -> str:
        status = f"{self.status} " if self.status else ""
        text = f"error: {status}{self.code}: {self.message}"
        if self.retry_after:
            text += f" (retry after {format_seconds(self.retry_after)})"
        if self.code == "conversation_limit":
            text += " — start a new conversation"
        return text


def format_seconds(value: str) -> str:
    try:
        seconds = int(float(value))
    except ValueError:
        return f"{value} s"
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {seconds} s"
    return f"{seconds} s"


def bearer_signer(token: str) -> Signer:
    def sign(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> dict[str, str]:
        return {**headers, "Authorization": f"Bearer {token}"}

    return sign


def sigv4_headers(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    credentials: Any,
    region: str,
) -> dict[str, str]:
    """The headers of a request signed for a Lambda function URL (service `lambda`)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method=method, url=url, data=body or b"", headers=dict(headers))
    SigV4Auth(credentials, "lambda", region).add_auth(request)
    return dict(request.headers.items())


def iam_signer(user_id: str, region: str | None) -> Signer:
    import botocore.session

    session = botocore.session.get_session()
    credentials = session.get_credentials()
    if credentials is None:
        raise GatewayError(None, "no_credentials", "no AWS credentials found for --iam")
    resolved_region = region or session.get_config_variable("region")
    if not resolved_region:
        raise GatewayError(None, "no_region", "no AWS region: pass --region or set AWS_REGION")

    def sign(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> dict[str, str]:
        with_user = {**headers, END_USER_HEADER: user_id}
        return sigv4_headers(
            method,
            url,
            with_user,
            body,
            credentials=credentials.get_frozen_credentials(),
            region=resolved_region,
        )

    return sign


def gateway_error_from(error: urllib.error.HTTPError) -> GatewayError:
    raw = error.read()
    code, message = "http_error", raw.decode("utf-8", "replace").strip() or str(error.reason)
    try:
        details = json.loads(raw)["error"]
        code, message = str(details["code"]), str(details["message"])
    except (ValueError, KeyError, TypeError):
        pass
    return GatewayError(error.code, code, message, error.headers.get("Retry-After"))


@dataclass
class GatewayClient:
    url: str
    sign: Signer
    timeout_s: float = READ_TIMEOUT_S

    def open(self, method: str, path: str, payload: Any = None) -> HTTPResponse:
        url = self.url.rstrip("/") + path
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Accept": "text/event-stream, application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            url, data=body, method=method, headers=self.sign(method, url, headers, body)
        )
        try:
            response: HTTPResponse = urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            raise gateway_error_from(exc) from None
        except urllib.error.URLError as exc:
            raise GatewayError(None, "unreachable", f"{self.url}: {exc.reason}") from None
        return response

    def json(self, method: str, path: str, payload: Any = None) -> Any:
        with self.open(method, path, payload) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def cancel(self, request_id: str) -> None:
        self.json("POST", f"/chat/{request_id}/cancel")


class EventReader:
    """Server-Sent Events from a response: (event name or None, data) per blank-line block."""

    def __init__(self, response: IO[bytes]) -> None:
        self._response = response
        self._name: str | None = None
        self._data: list[str] = []

    def __iter__(self) -> Iterator[tuple[str | None, str]]:
        while line := self._response.readline():
            text = line.decode("utf-8").rstrip("\r\n")
            if text:
                self._add(text)
            elif self._data:
                event = (self._name, "\n".join(self._data))
                self._name, self._data = None, []
                yield event

    def _add(self, line: str) -> None:
        field_name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field_name == "event":
            self._name = value
        elif field_name == "data":
            self._data.append(value)


@dataclass
class Reply:
    conversation_id: str | None = None
    request_id: str | None = None
    model: str | None = None
    text: str = ""
    usage: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False


def apply_event(reply: Reply, name: str | None, data: str, out: TextIO) -> None:
    if name is None and data == "[DONE]":
        reply.done = True
        return
    payload = json.loads(data)
    if name == "meta":
        reply.conversation_id = payload.get("conversation_id")
        reply.request_id = payload.get("request_id") or reply.request_id
        reply.model = payload.get("model")
    elif name == "usage":
        reply.usage = payload
    elif name == "error":
        reply.errors.append(payload)
    elif name is None and isinstance(payload.get("delta"), str):
        reply.text += payload["delta"]
        out.write(payload["delta"])
        out.flush()


class EventPump:
    """Reads events on a daemon thread, so Ctrl-C lands in the caller and never mid-read.

    http.client's chunked decoding cannot resume after an interrupted read; the queue can.
    """

    def __init__(self, response: IO[bytes]) -> None:
        self._events: queue.Queue[tuple[str | None, str] | BaseException | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._pump, args=(response,), name="tollgate-sse", daemon=True
        )
        self._thread.start()

    def _pump(self, response: IO[bytes]) -> None:
        try:
            for event in EventReader(response):
                self._events.put(event)
        except Exception as exc:
            self._events.put(exc)
        finally:
            self._events.put(None)

    def __iter__(self) -> Iterator[tuple[str | None, str]]:
        while (item := self._events.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item


def stream_reply(
    client: GatewayClient,
    request: dict[str, Any],
    *,
    out: TextIO,
    err: TextIO,
) -> Reply:
    """Stream one turn to `out`; Ctrl-C asks the gateway to cancel and reads the ending."""
    reply = Reply()
    response = client.open("POST", "/chat", request)
    reply.request_id = response.headers.get("X-Request-Id")
    events = EventPump(response)
    try:
        try:
            read_events(reply, events, out)
        except KeyboardInterrupt:
            reply.cancelled = True
            cancel_and_drain(client, reply, events, out=out, err=err)
    finally:
        response.close()
    if reply.text and not reply.text.endswith("\n"):
        out.write("\n")
        out.flush()
    return reply


def read_events(reply: Reply, events: EventPump, out: TextIO) -> None:
    try:
        for name, data in events:
            apply_event(reply, name, data, out)
            if reply.done:
                return
    except (OSError, HTTPException, ValueError) as exc:
        reply.errors.append({"code": "connection_lost", "message": str(exc) or repr(exc)})
        return
    if not reply.cancelled:
        reply.errors.append({"code": "connection_lost", "message": "the stream ended early"})


def cancel_and_drain(
    client: GatewayClient, reply: Reply, events: EventPump, *, out: TextIO, err: TextIO
) -> None:
    if reply.request_id is None:
        return
    err.write("\n[cancelling…]\n")
    err.flush()
    try:
        client.cancel(reply.request_id)
    except GatewayError as exc:
        err.write(f"cancel failed: {exc.describe()}\n")
        return
    with contextlib.suppress(KeyboardInterrupt):
        read_events(reply, events, out)


def money(value: Any) -> str:
    return f"${float(value):.6f}" if value is not None else "–"


def describe_budget(budget: Mapping[str, Any]) -> str:
    parts = [f"{int(budget.get('tokens_remaining') or 0):,} tokens"]
    if budget.get("cost_remaining_usd") is not None:
        parts.append(f"{money(budget['cost_remaining_usd'])}")
    return f"budget left today: {', '.join(parts)} (resets {budget.get('resets_at', '?')})"


def describe_reply(reply: Reply) -> list[str]:
    lines = []
    if reply.cancelled:
        lines.append("[cancelled]")
    for error in reply.errors:
        lines.append(f"error: {error.get('code')}: {error.get('message')}")
    if reply.usage is not None:
        usage = reply.usage
        tokens = f"{usage.get('input_tokens', 0)} in"
        if usage.get("cached_input_tokens"):
            tokens += f" ({usage['cached_input_tokens']} cached)"
        tokens += f" + {usage.get('output_tokens', 0)} out tokens"
        model = f"{reply.model} · " if reply.model else ""
        lines.append(f"[{model}{tokens} · {money(usage.get('cost_usd'))}]")
        if isinstance(usage.get("budget"), dict):
            lines.append(f"[{describe_budget(usage['budget'])}]")
    return lines


def describe_usage(usage: Mapping[str, Any]) -> str:
    return json.dumps(usage, indent=2)


@dataclass
class Session:
    client: GatewayClient
    prompt: str
    max_tokens: int | None
    conversation_id: str | None
    out: TextIO
    err: TextIO

    def turn(self, message: str) -> Reply:
        request: dict[str, Any] = {
            "message": message,
            "conversation_id": self.conversation_id,
            "prompt": self.prompt,
        }
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        reply = stream_reply(self.client, request, out=self.out, err=self.err)
        if reply.conversation_id:
            self.conversation_id = reply.conversation_id
        for line in describe_reply(reply):
            self.err.write(line + "\n")
        self.err.flush()
        return reply

    def note_conversation(self) -> None:
        if self.conversation_id:
            self.err.write(
                f"conversation: {self.conversation_id}"
                f" (continue with --conversation {self.conversation_id})\n"
            )
            self.err.flush()


INTERACTIVE_HELP = "/new starts a new conversation, /usage shows today's budget, /quit ends"


def interactive(session: Session, stdin: TextIO) -> int:
    err = session.err
    err.write(f"tollgate-chat · {session.client.url} · {INTERACTIVE_HELP}\n")
    while True:
        err.write("\nyou> ")
        err.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            err.write("\n")
            break
        if not line:
            err.write("\n")
            break
        message = line.strip()
        if not message:
            continue
        if message in ("/quit", "/exit"):
            break
        try:
            if message == "/new":
                session.note_conversation()
                session.conversation_id = None
                err.write("[new conversation]\n")
            elif message == "/usage":
                session.out.write(describe_usage(session.client.json("GET", "/usage")) + "\n")
                session.out.flush()
            else:
                session.turn(message)
        except GatewayError as exc:
            err.write(exc.describe() + "\n")
        except KeyboardInterrupt:
            err.write("\n[interrupted]\n")
    session.note_conversation()
    return EXIT_OK


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tollgate-chat",
        description="Chat with a Tollgate gateway; replies stream to stdout, usage to stderr.",
    )
    parser.add_argument("message", nargs="?", help="send one message; omit for a chat loop")
    parser.add_argument(
        "--url",
        default=os.environ.get("TOLLGATE_URL", DEFAULT_URL),
        help="gateway base URL (env TOLLGATE_URL; default %(default)s)",
    )
    parser.add_argument("--token", help="JWT bearer token (env TOLLGATE_TOKEN)")
    parser.add_argument("--conversation", help="continue this conversation id")
    parser.add_argument("--prompt", default="default", help="system prompt name")
    parser.add_argument("--max-tokens", type=int, help="reply token cap (clamped by the gateway)")
    parser.add_argument("--usage", action="store_true", help="print today's budget and exit")
    parser.add_argument(
        "--iam", action="store_true", help="sign requests with SigV4 (AUTH_MODE=iam)"
    )
    parser.add_argument("--user", help="end user id sent as X-End-User-Id with --iam")
    parser.add_argument("--region", help="AWS region for --iam (default: the AWS config)")
    args = parser.parse_args(argv)
    if args.max_tokens is not None and args.max_tokens < 1:
        parser.error("--max-tokens must be at least 1")
    if args.iam and not args.user:
        parser.error("--iam needs --user (the end user id)")
    if not args.iam:
        args.token = args.token or os.environ.get("TOLLGATE_TOKEN")
        if not args.token:
            parser.error(
                "no token: pass --token or set TOLLGATE_TOKEN (`make run` prints one), or use --iam"
            )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        sign = iam_signer(args.user, args.region) if args.iam else bearer_signer(args.token)
        client = GatewayClient(args.url, sign)
        if args.usage:
            out.write(describe_usage(client.json("GET", "/usage")) + "\n")
            return EXIT_OK
        session = Session(client, args.prompt, args.max_tokens, args.conversation, out, err)
        if args.message is None:
            return interactive(session, sys.stdin)
        reply = session.turn(args.message)
        session.note_conversation()
    except GatewayError as exc:
        err.write(exc.describe() + "\n")
        return EXIT_GATEWAY_ERROR
    except KeyboardInterrupt:
        err.write("\n")
        return EXIT_INTERRUPTED
    if reply.cancelled:
        return EXIT_INTERRUPTED
    return EXIT_GATEWAY_ERROR if reply.errors or not reply.done else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
