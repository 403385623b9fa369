"""
Debian's Firefox ESR for the browser tests, driven over WebDriver BiDi by
``tests/browsers/firefox_driver.mjs`` (puppeteer-core, installed by
``make browser-drivers`` into ``tests/browsers/node_modules``; it never
downloads a browser).

The API is a small subset of Playwright's sync ``Page``, so that helpers
written for Chromium pages take Firefox pages too::

    with Firefox(command) as firefox:   # command: argv -> argv (e.g. nsenter)
        page = firefox.new_page(init_scripts=[js])   # a profile of its own
        page.goto(url)
        page.evaluate("(x) => x + 1", 41)           # -> 42
        page.wait_for_function("() => window.ready", timeout=20_000)
        page.console                                # ["error: ...", "page error: ..."]
        page.close()

``Firefox`` starts one browser; each page lives in a browser context (a
profile) of its own, like a person on their own machine.  Firefox's fake
camera and microphone are on, with no permission prompt, and the
preferences keep it off the network except for what the pages open.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

FIREFOX = "/usr/bin/firefox-esr"
DRIVERS = Path(__file__).resolve().parents[1] / "browsers"
DRIVER = DRIVERS / "firefox_driver.mjs"
PUPPETEER = DRIVERS / "node_modules" / "puppeteer-core"
START_TIMEOUT_S = 90.0
REQUEST_TIMEOUT_S = 60.0


class FirefoxError(Exception):
    """
    Firefox cannot start, or a request to it failed (a page's script threw,
    a navigation failed, the driver died).
    """


def missing() -> str | None:
    """
    Why Firefox cannot be driven here, or None when it can.
    """
    if not os.access(FIREFOX, os.X_OK):
        return f"{FIREFOX} is not there (Debian's firefox-esr)"
    if shutil.which("node") is None:
        return "node is not there"
    if not PUPPETEER.is_dir():
        return f"{PUPPETEER} is not there (make browser-drivers)"
    return None


class Firefox:
    """
    One headless Firefox, started by `command(argv)` (which may wrap argv,
    e.g. to run it in a network namespace), with temporary files in `folder`.
    """

    def __init__(
        self, command: Callable[[list[str]], list[str]] = list, folder: Path | None = None
    ) -> None:
        reason = missing()
        if reason is not None:
            raise FirefoxError(reason)
        env = dict(os.environ, PUPPETEER_SKIP_DOWNLOAD="1")
        if folder is not None:
            env["TMPDIR"] = str(folder)  # the profiles go there
        self._process = subprocess.Popen(
            command(["node", str(DRIVER), FIREFOX]),
            cwd=DRIVERS,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._pages: dict[int, FirefoxPage] = {}
        self._lock = threading.Lock()
        self._next_id = 0
        self._stderr: list[str] = []
        self.version = ""
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        try:
            ready = self._answers.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            ready = None
        if ready is None or ready.get("event") != "ready":
            self.close()
            raise FirefoxError(f"Firefox did not start: {ready} {''.join(self._stderr)[-2000:]}")
        self.version = str(ready.get("version", ""))

    def __enter__(self) -> Firefox:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def new_page(self, *, init_scripts: Sequence[str] = ()) -> FirefoxPage:
        """
        A blank page in a browser context of its own; each of `init_scripts`
        runs in it before the page's own scripts, on every navigation.
        """
        page = FirefoxPage(self, 0)
        number = int(self.request("open", init=list(init_scripts)))
        page.number = number
        self._pages[number] = page
        return page

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def request(self, op: str, **fields: Any) -> Any:
        """
        Send one request to the driver and wait for its answer's result.
        """
        with self._lock:
            if self._process.poll() is not None or self._process.stdin is None:
                raise FirefoxError(f"the driver is gone: {''.join(self._stderr)[-2000:]}")
            self._next_id += 1
            request_id = self._next_id
            self._process.stdin.write(json.dumps({"id": request_id, "op": op, **fields}) + "\n")
            self._process.stdin.flush()
            while True:
                try:
                    answer = self._answers.get(timeout=REQUEST_TIMEOUT_S)
                except queue.Empty:
                    raise FirefoxError(f"no answer to {op} in {REQUEST_TIMEOUT_S} s") from None
                if answer is None:
                    raise FirefoxError(f"the driver died: {''.join(self._stderr)[-2000:]}")
                if answer.get("id") == request_id:
                    break
        if "error" in answer:
            raise FirefoxError(f"{op}: {answer['error']}")
        return answer.get("result")

    def close(self) -> None:
        process = self._process
        if process.poll() is None:
            with contextlib.suppress(FirefoxError):
                self.request("quit")
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait()
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def _read(self) -> None:
        assert self._process.stdout is not None
        try:
            for line in self._process.stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                event = message.get("event")
                if event in ("console", "pageerror"):
                    page = self._pages.get(message.get("page"))
                    if page is not None:
                        page._said(event, message)
                else:
                    self._answers.put(message)
        except ValueError:  # the pipe was closed under us
            pass
        self._answers.put(None)

    def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        try:
            for line in self._process.stderr:
                self._stderr.append(line)
                del self._stderr[:-200]
        except ValueError:
            pass


class FirefoxPage:
    """
    One page of a `Firefox`, in a browser context of its own.  `console`
    holds what it logged, as ``"<type>: <text>"``, and its uncaught errors,
    as ``"page error: <message>"``.
    """

    def __init__(self, firefox: Firefox, number: int) -> None:
        self._firefox = firefox
        self.number = number
        self.console: list[str] = []
        self.closed = False

    def goto(self, url: str) -> None:
        self._firefox.request("goto", page=self.number, url=url)

    def evaluate(self, expression: str, arg: Any = None) -> Any:
        """
        The JSON value of `expression`; a function is called with `arg` (and
        awaited, when it is async).
        """
        return self._firefox.request("evaluate", page=self.number, js=expression, arg=arg)

    def wait_for_function(
        self, expression: str, *, arg: Any = None, timeout: float | None = None
    ) -> None:
        """
        Wait until the function `expression`, called with `arg`, answers
        something true; `timeout` in milliseconds (20 s by default).
        """
        timeout = 20_000 if timeout is None else timeout
        deadline = time.monotonic() + timeout / 1000
        while not self.evaluate(expression, arg):
            if time.monotonic() > deadline:
                raise FirefoxError(f"timed out after {timeout} ms waiting for {expression}")
            time.sleep(0.1)

    def close(self) -> None:
        """
        Close the page (nothing to do once its Firefox is closed).
        """
        if not self.closed and self._firefox.running:
            self._firefox.request("close", page=self.number)
        self.closed = True

    def _said(self, event: str, message: dict[str, Any]) -> None:
        if event == "pageerror":
            self.console.append(f"page error: {message.get('text')}")
        else:
            self.console.append(f"{message.get('type')}: {message.get('text')}")
