"""A moto server that handles one request at a time, like DynamoDB handles writes to an item.

moto's in-memory backends check a condition and apply the update without a lock, so two
concurrent conditional updates of one item can both pass — which real DynamoDB never
allows. Serialising the requests keeps moto's answers faithful to DynamoDB's semantics
for the concurrency tests and the local run (each request takes about a millisecond).

moto's own server (werkzeug's development server) closes the connection after every
answer; AWS's endpoints keep connections alive, and a client's CPU per call depends on
it (a new TCP connection per call costs the gateway about 0.5 ms). So moto's WSGI app is
served by uvicorn, which keeps HTTP/1.1 connections alive like the real endpoints.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import uvicorn
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def one_request_at_a_time(app: WsgiApp) -> WsgiApp:
    lock = threading.Lock()

    def serialized(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with lock:
            return list(app(environ, start_response))

    return serialized


class SerializedMotoServer:
    """moto on `ip_address:port` in a thread of this process: `start()`, then `stop()`."""

    def __init__(self, ip_address: str = "127.0.0.1", port: int = 5000, verbose: bool = False):
        app = one_request_at_a_time(DomainDispatcherApplication(create_backend_app))
        config = uvicorn.Config(
            app,
            host=ip_address,
            port=port,
            interface="wsgi",
            lifespan="off",
            access_log=verbose,
            log_level="info" if verbose else "warning",
            timeout_keep_alive=60,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.run, name="moto", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the moto server did not start")
            self._thread.join(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()


def main() -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(description="moto server, one request at a time")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    server = SerializedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
