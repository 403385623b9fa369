"""
A webhook receiver on loopback for the tests: it checks every delivery with
the verification snippet of docs/operations.md (so the snippet is tested
too) and records the events, or answers 500, or hangs.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def docs_verify() -> Callable[..., dict[str, Any]]:
    """
    The ``verify`` function of the snippet in docs/operations.md.
    """
    text = OPERATIONS.read_text()
    match = re.search(r"<!-- webhook-verify -->\s*```python\n(.*?)```", text, re.S)
    assert match is not None, "docs/operations.md lost its webhook-verify snippet"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), str(OPERATIONS), "exec"), namespace)
    verify: Callable[..., dict[str, Any]] = namespace["verify"]
    return verify


class Receiver:
    """
    `mode` is ``"ok"`` (verify, record, answer 204), ``"fail"`` (answer 500)
    or ``"hang"`` (never answer, until `close`); `http` is the version it
    answers with.
    """

    def __init__(self, secret: bytes, mode: str = "ok", *, http: str = "HTTP/1.1") -> None:
        self.secret = secret
        self.mode = mode
        self.events: list[dict[str, Any]] = []
        self.deliveries: list[str] = []
        self.bad: list[str] = []
        self.requests = 0
        self._release = threading.Event()
        self._lock = threading.Lock()
        verify = docs_verify()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 keeps the connection; "HTTP/1.0" closes it after
            # every answer, without saying so in a Connection header.
            protocol_version = http

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.requests += 1
                if receiver.mode == "hang":
                    receiver._release.wait(30)
                    return
                if receiver.mode == "fail":
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    event = verify(
                        receiver.secret, body, self.headers.get("X-Rtcsignal-Signature", "")
                    )
                except ValueError as e:
                    with receiver._lock:
                        receiver.bad.append(str(e))
                    self.send_response(400)
                else:
                    with receiver._lock:
                        receiver.events.append(event)
                        receiver.deliveries.append(self.headers.get("X-Rtcsignal-Delivery", ""))
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
