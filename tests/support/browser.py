"""
What the browser tests share: a private loopback-only network namespace,
``twistd -n rtcsignal`` over TLS with a development certificate, headless
Chromium (Debian's, driven by Playwright) and Firefox ESR (Debian's, driven
by ``tests/support/firefox.py``) in it, and `Peer`, a person in a call on either.

``conftest.py`` makes fixtures of them for every test: ``network``,
``server``, ``browser`` (Chromium), ``firefox`` and ``call`` (`Call`).

The namespace has only a loopback interface when the tests can make one
(as root, with ``unshare``): WebRTC works on the host's loopback too, but the
browsers also talk to the outside (account and update lookups, multicast
DNS) whatever their settings, and the namespace keeps every packet on
127.0.0.1.  Set ``RTCSIGNAL_TEST_NETNS=0`` to run in the host's network
instead.  A browser that cannot start skips its test, except under
``CI=true``, where the test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Generic, NoReturn, Protocol, TypeVar

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from .firefox import Firefox, FirefoxError, FirefoxPage

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
TWISTD = Path(sys.executable).with_name("twistd")
ROOM = "standup"
MAX_PEERS = 3
TIMEOUT_MS = 20_000

CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--no-sandbox",
    "--ignore-certificate-errors",
]

# Each remote peer of the page: [peer id, ...] for <video data-peer-id> that
# show frames.
REMOTE_VIDEOS = """() => [...document.querySelectorAll("video[data-peer-id]")]
    .filter((video) => video.videoWidth > 0)
    .map((video) => video.dataset.peerId)
    .sort()"""

ALL_REMOTE_VIDEOS = """() => [...document.querySelectorAll("video[data-peer-id]")]
    .map((video) => video.dataset.peerId)
    .sort()"""

# Video frames decoded so far, per remote peer, from getStats(), and painted
# by its <video> (Firefox: mozPaintedFrames, as its getVideoPlaybackQuality()
# counts no frames of a MediaStream).
FRAMES_DECODED = """async () => {
    const frames = {};
    for (const [id, pc] of window.rtcsignal.peers) {
        const stats = await pc.getStats();
        frames[id] = 0;
        stats.forEach((report) => {
            if (report.type === "inbound-rtp" && report.kind === "video") {
                frames[id] += report.framesDecoded ?? 0;
            }
        });
    }
    return frames;
}"""

FRAMES_PAINTED = """() => Object.fromEntries(
    [...document.querySelectorAll("video[data-peer-id]")].map((video) => [
        video.dataset.peerId,
        video.mozPaintedFrames ?? video.getVideoPlaybackQuality().totalVideoFrames,
    ]),
)"""


# A browser whose user refuses the camera and microphone.
NO_DEVICES = """navigator.mediaDevices.getUserMedia = async () => {
    throw new DOMException("Permission denied", "NotAllowedError");
};"""


class Network:
    """
    Where the server and the browser run: a private network namespace, held
    open by a sleeping process, or the host's network.
    """

    def __init__(self, holder: subprocess.Popen[str] | None) -> None:
        self._holder = holder

    @property
    def private(self) -> bool:
        return self._holder is not None

    def command(self, argv: list[str]) -> list[str]:
        if self._holder is None:
            return argv
        # nsenter execs the command: the process we start is the command.
        return ["nsenter", f"--net=/proc/{self._holder.pid}/ns/net", "--", *argv]

    def chromium(self, folder: Path) -> str:
        if self._holder is None:
            return CHROMIUM
        wrapper = folder / "chromium"
        wrapper.write_text(
            f'#!/bin/sh\nexec {" ".join(self.command([CHROMIUM]))} "$@"\n', encoding="utf-8"
        )
        wrapper.chmod(0o755)
        return str(wrapper)

    def free_port(self) -> int:
        if self._holder is not None:
            return 8443  # nothing else listens in a fresh namespace
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            return port

    def close(self) -> None:
        if self._holder is not None:
            self._holder.kill()
            self._holder.wait()


def private_network() -> Network:
    tools = all(shutil.which(tool) for tool in ("unshare", "nsenter", "ip"))
    if os.environ.get("RTCSIGNAL_TEST_NETNS") == "0" or os.geteuid() != 0 or not tools:
        return Network(None)
    holder = subprocess.Popen(
        ["unshare", "--net", "--", "sh", "-c", "ip link set lo up && echo up && exec sleep 600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert holder.stdout is not None
    if holder.stdout.readline().strip() != "up":
        holder.kill()
        holder.wait()
        return Network(None)
    return Network(holder)


class Server:
    """
    ``twistd -n rtcsignal`` over TLS, from this source tree, in `network`,
    with `args` added to its options.
    """

    def __init__(
        self, network: Network, folder: Path, key: Path, cert: Path, args: Sequence[str] = ()
    ) -> None:
        self.network = network
        self.folder = folder
        self.args = list(args)
        self.port = network.free_port()
        self.endpoint = f"ssl:{self.port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        self.process: subprocess.Popen[bytes] | None = None
        self._runs = 0
        self._stderr: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._runs += 1
        log = self.folder / f"twistd-{self._runs}.log"
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = (self.folder / f"twistd-{self._runs}.stderr").open("wb")
        argv = [
            str(TWISTD),
            "--pidfile=",
            "--nodaemon",
            f"--logfile={log}",
            "rtcsignal",
            "--endpoint",
            self.endpoint,
            "--max-peers",
            str(MAX_PEERS),
            *self.args,
        ]
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            self.network.command(argv),
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": path},
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if log.exists() and f"starting on {self.port}" in log.read_text("utf-8", "replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        output = log.read_text("utf-8", "replace") if log.exists() else ""
        errors = (self.folder / f"twistd-{self._runs}.stderr").read_text("utf-8", "replace")
        raise AssertionError(f"twistd did not start listening:\n{errors}\n{output}")

    def log(self) -> str:
        """
        What the current run has logged so far.
        """
        path = self.folder / f"twistd-{self._runs}.log"
        return path.read_text("utf-8", "replace") if path.exists() else ""

    def kill(self) -> None:
        """
        Die at once, as in a crash: the browsers' sockets just drop.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def close(self) -> None:
        self.kill()
        if self._stderr is not None:
            self._stderr.close()


def make_certs(certs: Path) -> tuple[Path, Path]:
    """
    A key and a certificate for 127.0.0.1 in `certs`, made as the README says.
    """
    made = subprocess.run(
        [sys.executable, "-m", "twisted_signal.devcert", "--dir", str(certs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert "twistd -n rtcsignal --endpoint ssl:8443:privateKey=" in made.stdout
    key, cert = certs / "key.pem", certs / "cert.pem"
    assert key.stat().st_mode & 0o077 == 0, "the private key is readable by others"
    return key, cert


@contextmanager
def chromium(network: Network, folder: Path) -> Iterator[Browser]:
    """
    Headless Chromium in `network`; the test is skipped if it cannot start,
    or fails under ``CI=true``.
    """
    with sync_playwright() as playwright:
        try:
            if not os.access(CHROMIUM, os.X_OK):
                raise FileNotFoundError(f"{CHROMIUM} is not there")
            browser = playwright.chromium.launch(
                executable_path=network.chromium(folder),
                args=CHROMIUM_ARGS,
                timeout=30_000,
            )
        except Exception as e:
            unavailable(f"Chromium cannot start: {e}")
        yield browser
        browser.close()


def unavailable(message: str) -> NoReturn:
    """
    A browser (or what drives it) is missing: skip, or fail under ``CI=true``.
    """
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def firefox(network: Network, folder: Path) -> Iterator[Firefox]:
    """
    Headless Firefox ESR in `network`; the test is skipped if it cannot
    start, or fails under ``CI=true``.
    """
    try:
        browser = Firefox(network.command, folder)
    except FirefoxError as e:
        unavailable(f"Firefox cannot start: {e}")
    with browser:
        yield browser


class ScriptPage(Protocol):
    """
    What `Peer` needs of a page: Playwright's ``Page`` and `FirefoxPage` both.
    """

    def evaluate(self, expression: str, arg: Any = None) -> Any: ...

    def wait_for_function(
        self, expression: str, *, arg: Any = None, timeout: float | None = None
    ) -> Any: ...


P = TypeVar("P", bound=ScriptPage)


class Peer(Generic[P]):
    """
    One person in the call: a page in a browser context of its own, in
    Chromium (``Peer[Page]``, see `open_chromium`) or Firefox
    (``Peer[FirefoxPage]``, see `open_firefox`).  `console` collects what the
    page logged and its uncaught errors.
    """

    def __init__(
        self, page: P, name: str, console: list[str], close: Callable[[], None], browser: str
    ) -> None:
        self.page = page
        self.name = name
        self.console = console
        self.browser = browser
        self._close = close

    @property
    def state(self) -> str:
        return str(self.page.evaluate("document.body.dataset.state"))

    @property
    def peer_id(self) -> str:
        return str(self.page.evaluate("window.rtcsignal.peerId"))

    def wait_for(self, js: str, arg: Any = None, timeout_ms: float = TIMEOUT_MS) -> None:
        """
        Wait until the function `js`, called with `arg`, answers something true.
        """
        self.page.wait_for_function(js, arg=arg, timeout=timeout_ms)

    def wait_for_state(self, state: str) -> None:
        self.wait_for("(state) => document.body.dataset.state === state", state)

    def joined(self) -> str:
        self.wait_for_state("joined")
        return self.peer_id

    def click(self, selector: str) -> None:
        """
        Click the element that `selector` finds (a button of the page).
        """
        assert self.page.evaluate(
            "(s) => { document.querySelector(s).click(); return true; }", selector
        )

    def frames(self) -> dict[str, int]:
        """
        Video frames decoded so far, per remote peer (getStats).
        """
        frames: dict[str, int] = self.page.evaluate(FRAMES_DECODED)
        return frames

    def painted(self) -> dict[str, int]:
        """
        Video frames shown so far, per remote peer's <video>.
        """
        painted: dict[str, int] = self.page.evaluate(FRAMES_PAINTED)
        return painted

    def sees(self, *others: Peer[Any] | str, timeout_ms: float = TIMEOUT_MS) -> None:
        """
        Wait until this page shows exactly these peers' videos, each with
        frames (videoWidth > 0), decoding more and more (getStats) and
        painting more and more.
        """
        ids = sorted(o if isinstance(o, str) else o.peer_id for o in others)
        self.wait_for(
            f"(ids) => JSON.stringify(({REMOTE_VIDEOS})()) === JSON.stringify(ids) "
            f"&& JSON.stringify(({ALL_REMOTE_VIDEOS})()) === JSON.stringify(ids)",
            ids,
            timeout_ms,
        )
        before, painted = self.frames(), self.painted()
        assert sorted(before) == ids, (self.name, before, ids)
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            now, painting = self.frames(), self.painted()
            if all(
                now.get(i, 0) >= before[i] + 5 and painting.get(i, 0) >= painted.get(i, 0) + 5
                for i in ids
            ):
                return
            assert time.monotonic() < deadline, (
                f"{self.name}: frames stuck: {before} -> {now}, painted {painted} -> {painting}"
            )
            time.sleep(0.2)

    def errors(self) -> list[str]:
        """
        The errors the page logged or threw.
        """
        return [line for line in self.console if line.startswith(("error:", "page error:"))]

    def close(self) -> None:
        self._close()

    def __repr__(self) -> str:
        return f"<{self.name} ({self.browser}): " + "\n  ".join(self.console[-30:]) + ">"


def open_chromium(
    browser: Browser,
    url: str | None,
    name: str,
    *,
    no_devices: bool = False,
    init_scripts: Sequence[str] = (),
) -> Peer[Page]:
    """
    A person in Chromium at `url` (None: a blank page), without camera and
    microphone if `no_devices`; `init_scripts` run before the page's own.
    """
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1024, "height": 640})
    context.set_default_timeout(TIMEOUT_MS)
    if no_devices:
        context.add_init_script(NO_DEVICES)
    for script in init_scripts:
        context.add_init_script(script)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"page error: {e}"))
    if url is not None:
        page.goto(url)
    return Peer(page, name, console, context.close, "chromium")


def open_firefox(
    browser: Firefox, url: str | None, name: str, *, init_scripts: Sequence[str] = ()
) -> Peer[FirefoxPage]:
    """
    A person in Firefox at `url` (None: a blank page).
    """
    page = browser.new_page(init_scripts=init_scripts)
    if url is not None:
        page.goto(url)
    return Peer(page, name, page.console, page.close, "firefox")


# Every violation of the pages' Content-Security-Policy, to the console
# (where Chromium also reports what the policy blocked).
CSP_REPORTER = """document.addEventListener("securitypolicyviolation", (e) => {
    console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI}`);
});"""


def csp_violations(console: Sequence[str]) -> list[str]:
    return [m for m in console if "CSP violation" in m or "Content Security Policy" in m]


class Call:
    """
    The people of one room, each in a browser context of their own.
    """

    def __init__(self, browser: Browser, url: str, shots: Path) -> None:
        self.browser = browser
        self.url = url
        self.shots = shots
        self.peers: list[Peer[Page]] = []
        self.everyone: list[Peer[Page]] = []

    def join(self, name: str, *, no_devices: bool = False) -> Peer[Page]:
        peer = open_chromium(
            self.browser, self.url, name, no_devices=no_devices, init_scripts=[CSP_REPORTER]
        )
        self.peers.append(peer)
        self.everyone.append(peer)
        return peer

    def csp_violations(self) -> dict[str, list[str]]:
        """
        What the server's Content-Security-Policy blocked, per page that did
        any harm to it: the page must need nothing the policy forbids.
        """
        found = {peer.name: csp_violations(peer.console) for peer in self.everyone}
        return {name: violations for name, violations in found.items() if violations}

    def join_from_landing_page(self, name: str, home: str, room: str) -> Peer[Page]:
        """
        Go to the landing page, try its "Generate" button, then type the
        room's name and press Enter.
        """
        peer = open_chromium(self.browser, None, name, init_scripts=[CSP_REPORTER])
        self.peers.append(peer)
        self.everyone.append(peer)
        page = peer.page
        page.goto(home)
        field = page.get_by_label("Room name")
        page.get_by_role("button", name="Generate").click()
        generated = field.input_value()
        assert re.fullmatch(r"[A-Za-z0-9_.~-]{1,64}", generated), generated
        field.fill("not a room")
        field.press("Enter")
        expect(page.get_by_role("alert")).to_contain_text("no spaces")
        field.fill(room)
        field.press("Enter")
        page.wait_for_url(f"**/{room}")
        return peer

    def remove(self, peer: Peer[Page]) -> None:
        self.peers.remove(peer)
        peer.close()

    def screenshot(self, peer: Peer[Page], name: str) -> Path:
        path = self.shots / f"{peer.name}-{name}.png"
        peer.page.screenshot(path=path)
        return path

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
