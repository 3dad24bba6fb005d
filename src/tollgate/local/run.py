"""`make run`: the whole gateway on this machine, with no AWS account and no API key.

DynamoDB (and CloudWatch Logs) come from an in-process moto server unless
AWS_ENDPOINT_URL_DYNAMODB points elsewhere; the model is the offline model server unless
OPENAI_BASE_URL or OPENAI_API_KEY is set. The gateway runs under uvicorn as a child process
whose stdout passes through this runner, line by line, to its own stdout and to the line
sinks (the seam where the local run ships cost records to the local CloudWatch Logs).

Children stay in the runner's process group, so Ctrl-C in the terminal reaches all of them;
SIGTERM/SIGHUP to the runner alone is forwarded to them on shutdown.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import boto3
import jwt

from tollgate.local.aggregate import DEFAULT_COST_LOG_GROUP
from tollgate.local.state import clear_state, write_state
from tollgate.local.tables import create_tables

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

LineSink = Callable[[str], None]
# Called once the local servers are up, with the gateway's environment (endpoints, names).
LineSinkFactory = Callable[[Mapping[str, str]], LineSink | None]

DEFAULT_PORT = 8080
DEFAULT_USAGE_TABLE = "tollgate-usage"
DEFAULT_CONVERSATIONS_TABLE = "tollgate-conversations"
LOCAL_REGION = "us-east-1"
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
OFFLINE_MODEL_API_KEY = "offline-model-key"
# The OpenAI SDK refuses to start without a key, even for a keyless compatible server.
PLACEHOLDER_API_KEY = "local-dev-key"
DEV_USER = "dev-user"
DEV_TOKEN_LIFETIME = timedelta(hours=12)
STARTUP_TIMEOUT_S = 60.0
# Outside Lambda nothing bounds a request before uvicorn does. httptools has no limit on the
# size or count of headers, so the local server speaks h11, whose buffer for an incomplete
# request head (all its headers) is capped: past it the answer is 400. Slow bodies are the
# app's BODY_READ_TIMEOUT_S; connections past --limit-concurrency get 503.
SERVER_LIMITS = (
    "--http", "h11",
    "--h11-max-incomplete-event-size", str(16 * 1024),
    "--limit-concurrency", "512",
    "--timeout-keep-alive", "60",
)  # fmt: skip
SHUTDOWN_TIMEOUT_S = 10.0
_FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequested(Exception):
    """A signal asked the runner to stop before everything had started."""


class StartupError(Exception):
    """A server did not come up; the message says which and why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def development_token(
    secret: str,
    *,
    subject: str = DEV_USER,
    issuer: str | None = None,
    audience: str | None = None,
    now: datetime | None = None,
) -> str:
    """An HS256 JWT the local gateway accepts (iss/aud included when the gateway checks them)."""
    issued_at = now or datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": subject,
        "iat": issued_at,
        "exp": issued_at + DEV_TOKEN_LIFETIME,
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def curl_command(base_url: str, token: str) -> str:
    return (
        f'curl -N {base_url}/chat -H "Authorization: Bearer {token}" '
        f'-H "Content-Type: application/json" -d \'{{"message": "Hello"}}\''
    )


class LocalRunner:
    """Starts the local servers and the gateway, stays in the foreground, stops them all."""

    def __init__(
        self,
        environ: MutableMapping[str, str] | None = None,
        *,
        line_sinks: Iterable[LineSink] = (),
        line_sink_factories: Iterable[LineSinkFactory] = (),
        output: IO[str] | None = None,
    ) -> None:
        # The runner's own environment by default: boto3 clients made in this process (the
        # sinks') then see the same endpoints and credentials as the children.
        self.env: MutableMapping[str, str] = os.environ if environ is None else environ
        self.line_sinks: list[LineSink] = list(line_sinks)
        self.line_sink_factories: list[LineSinkFactory] = list(line_sink_factories)
        self._output = output or sys.stdout
        self._output_lock = threading.Lock()
        self._children: list[tuple[str, subprocess.Popen[str]]] = []
        self._pumps: list[threading.Thread] = []
        self._moto_server: Any = None
        self._wrote_state = False
        self._stop_signal: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        """Signal handler: only records the request (no locks in signal context)."""
        self._stop_signal = signum

    @property
    def stopping(self) -> bool:
        return self._stop_signal is not None

    def run(self) -> int:
        """Run until a signal or a child's exit; returns the process exit code."""
        try:
            port = int(self.env.get("PORT") or DEFAULT_PORT)
            self.env["PORT"] = str(port)
            if not port_is_free(port):
                raise StartupError(f"port {port} on 127.0.0.1 is in use (set PORT to another)")
            dynamodb_description = self._prepare_dynamodb()
            model_description = self._prepare_model()
            self._prepare_auth()
            for factory in self.line_sink_factories:
                sink = factory(dict(self.env))
                if sink is not None:
                    self.line_sinks.append(sink)
            base_url = self._start_gateway(port)
            self._print_banner(base_url, dynamodb_description, model_description)
            return self._wait_for_stop_or_exit()
        except StopRequested:
            return 0
        except StartupError as error:
            self._say(f"tollgate local run: {error}", stream=sys.stderr)
            return 1
        finally:
            self._shutdown()

    def _wait_for_stop_or_exit(self) -> int:
        while not self.stopping:
            for name, process in self._children:
                code = process.poll()
                if code is not None:
                    self._say(f"tollgate local run: {name} exited with code {code}", sys.stderr)
                    return 0 if code == 0 else 1
            time.sleep(0.2)
        return 0

    def _shutdown(self) -> None:
        # Gateway first (it may still be talking to the model and DynamoDB), then the rest.
        for name, process in reversed(self._children):
            if process.poll() is None:
                try:
                    process.terminate()
                except ProcessLookupError:
                    continue
            self._reap(name, process)
        for pump in self._pumps:
            pump.join(timeout=SHUTDOWN_TIMEOUT_S)
        for sink in self.line_sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as error:
                    self._say(f"tollgate local run: closing a sink failed: {error!r}", sys.stderr)
        if self._wrote_state:
            clear_state()
        if self._moto_server is not None:
            self._moto_server.stop()
            self._moto_server = None

    def _reap(self, name: str, process: subprocess.Popen[str]) -> None:
        try:
            process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._say(f"tollgate local run: {name} ignored SIGTERM; killing it", sys.stderr)
            process.kill()
            process.wait()

    # -- DynamoDB --------------------------------------------------------------------------

    def _prepare_dynamodb(self) -> str:
        self.env.setdefault("AWS_REGION", self.env.get("AWS_DEFAULT_REGION") or LOCAL_REGION)
        self.env.setdefault("AWS_DEFAULT_REGION", self.env["AWS_REGION"])
        endpoint = self.env.get("AWS_ENDPOINT_URL_DYNAMODB")
        if endpoint:
            description = f"{endpoint} (AWS_ENDPOINT_URL_DYNAMODB)"
        else:
            endpoint = self._start_moto_server()
            description = f"{endpoint} (moto server; also CloudWatch Logs and metrics)"
        names = {
            "UsageTable": self.env.setdefault("USAGE_TABLE", DEFAULT_USAGE_TABLE),
            "ConversationsTable": self.env.setdefault(
                "CONVERSATIONS_TABLE", DEFAULT_CONVERSATIONS_TABLE
            ),
        }
        self.env.setdefault("COST_LOG_GROUP", DEFAULT_COST_LOG_GROUP)
        create_tables(self._dynamodb_client(endpoint), names)
        if self._moto_server is not None:
            write_state(
                {
                    "aws_endpoint": endpoint,
                    "tables": names,
                    "cost_log_group": self.env["COST_LOG_GROUP"],
                    "pid": os.getpid(),
                }
            )
            self._wrote_state = True
        return description

    def _start_moto_server(self) -> str:
        from tollgate.local.moto_server import SerializedMotoServer

        # Its per-request access lines would drown the gateway's output.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        port = free_port()
        server = SerializedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        self._moto_server = server
        endpoint = f"http://127.0.0.1:{port}"
        for service in ("DYNAMODB", "CLOUDWATCH_LOGS", "LOGS", "CLOUDWATCH"):
            self.env[f"AWS_ENDPOINT_URL_{service}"] = endpoint
        # Dummy credentials only: real ones must never be sent to a local stand-in.
        self.env.update(LOCAL_CREDENTIALS)
        for variable in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
            self.env.pop(variable, None)
        return endpoint

    def _dynamodb_client(self, endpoint: str) -> DynamoDBClient:
        session = boto3.session.Session(
            aws_access_key_id=self.env.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=self.env.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=self.env.get("AWS_SESSION_TOKEN"),
            region_name=self.env["AWS_REGION"],
        )
        return session.client("dynamodb", endpoint_url=endpoint)

    # -- model -----------------------------------------------------------------------------

    def _prepare_model(self) -> str:
        if self.env.get("OPENAI_BASE_URL"):
            self.env.setdefault("OPENAI_API_KEY", PLACEHOLDER_API_KEY)
            return f"{self.env['OPENAI_BASE_URL']} (OPENAI_BASE_URL)"
        if self.env.get("OPENAI_API_KEY"):
            return "OpenAI (OPENAI_API_KEY is set)"
        port = free_port()
        process = self._spawn(
            "offline model server",
            [sys.executable, "-m", "tollgate.local.offline_model", "--port", str(port)],
        )
        self._wait_for_health("offline model server", f"http://127.0.0.1:{port}/health", process)
        self.env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{port}/v1"
        self.env["OPENAI_API_KEY"] = OFFLINE_MODEL_API_KEY
        return f"{self.env['OPENAI_BASE_URL']} (offline model server)"

    # -- gateway ---------------------------------------------------------------------------

    def _prepare_auth(self) -> None:
        self.env.setdefault("AUTH_MODE", "jwt")
        if not self.env.get("JWT_SECRET"):
            self.env["JWT_SECRET"] = secrets.token_urlsafe(32)

    def _start_gateway(self, port: int) -> str:
        process = self._spawn(
            "gateway",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "tollgate.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *SERVER_LIMITS,
            ],
            pipe_stdout=True,
            # As under the Web Adapter: stdout is a block-buffered pipe, so every log line
            # reaches the log shipper only because the gateway flushes it.
            unbuffered=False,
        )
        base_url = f"http://127.0.0.1:{port}"
        self._wait_for_health("gateway", f"{base_url}/health", process)
        return base_url

    def _print_banner(self, base_url: str, dynamodb: str, model: str) -> None:
        lines = [
            "",
            f"Tollgate is running at {base_url}",
            f"  DynamoDB: {dynamodb}",
            f"  Model:    {model}",
        ]
        if self.env.get("AUTH_MODE") == "iam":
            # Behind the function URL the Web Adapter adds the IAM request context; locally
            # the caller plays that part.
            context = '{"authorizer": {"iam": {"userArn": "arn:aws:iam::000000000000:user/local"}}}'
            lines += [
                "  AUTH_MODE=iam: send the end user in X-End-User-Id, and the IAM request",
                "  context the Web Adapter would add in x-amzn-request-context. Try:",
                f"curl -N {base_url}/chat -H 'X-End-User-Id: {DEV_USER}' "
                f"-H 'x-amzn-request-context: {context}' "
                "-H 'Content-Type: application/json' -d '{\"message\": \"Hello\"}'",
            ]
        else:
            token = development_token(
                self.env["JWT_SECRET"],
                issuer=self.env.get("JWT_ISSUER") or None,
                audience=self.env.get("JWT_AUDIENCE") or None,
            )
            lines += [
                f"Development token (sub {DEV_USER}, valid 12 h):",
                f"  {token}",
                "Chat page (the token rides in the URL fragment, never sent to the server):",
                f"  {base_url}/#token={token}",
                "Try:",
                curl_command(base_url, token),
            ]
        lines += ["Ctrl-C stops everything.", ""]
        self._say("\n".join(lines))

    # -- children --------------------------------------------------------------------------

    def _spawn(
        self, name: str, command: list[str], *, pipe_stdout: bool = False, unbuffered: bool = True
    ) -> subprocess.Popen[str]:
        if self.stopping:
            raise StopRequested
        environment = dict(self.env)
        environment.pop("PYTHONUNBUFFERED", None)
        if unbuffered:
            environment["PYTHONUNBUFFERED"] = "1"
        # No new session or process group: the terminal's Ctrl-C must reach the children too.
        process = subprocess.Popen(
            command,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else None,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self._children.append((name, process))
        if process.stdout is not None:
            pump = threading.Thread(
                target=self._pump_lines, args=(process.stdout,), name=f"{name}-stdout", daemon=True
            )
            pump.start()
            self._pumps.append(pump)
        return process

    def _pump_lines(self, stream: IO[str]) -> None:
        """Forward each line unchanged, then hand it (without its newline) to every sink."""
        for line in stream:
            self._say(line, end="")
            text = line.rstrip("\n")
            for sink in list(self.line_sinks):
                try:
                    sink(text)
                except Exception as error:
                    self._say(f"tollgate local run: a line sink failed: {error!r}", sys.stderr)

    def _wait_for_health(self, name: str, url: str, process: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.stopping:
                raise StopRequested
            code = process.poll()
            if code is not None:
                raise StartupError(f"{name} exited with code {code} before {url} answered")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or not ready (a 503 is an HTTPError)
            if time.monotonic() > deadline:
                raise StartupError(f"{name} did not answer {url} within {STARTUP_TIMEOUT_S:.0f} s")
            time.sleep(0.1)

    def _say(self, text: str, stream: IO[str] | None = None, *, end: str = "\n") -> None:
        with self._output_lock:
            target = stream or self._output
            try:
                target.write(text + end)
                target.flush()
            except (BrokenPipeError, ValueError):
                pass  # nobody reads our output any more; keep draining the children


def cost_record_shipper(env: Mapping[str, str]) -> LineSink | None:
    """Ship cost records to the local CloudWatch Logs server, as Lambda ships stdout."""
    endpoint = env.get("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS") or env.get("AWS_ENDPOINT_URL_LOGS")
    if not endpoint:
        return None  # never ship local records to a real account
    from tollgate.local.log_shipper import CostRecordShipper

    client = boto3.client("logs", endpoint_url=endpoint, region_name=env.get("AWS_REGION"))
    return CostRecordShipper(env["COST_LOG_GROUP"], client)


def default_line_sink_factories() -> list[LineSinkFactory]:
    return [cost_record_shipper]


def main() -> None:
    runner = LocalRunner(line_sink_factories=default_line_sink_factories())
    for signum in _FORWARDED_SIGNALS:
        signal.signal(signum, runner.request_stop)
    sys.exit(runner.run())


if __name__ == "__main__":
    main()
