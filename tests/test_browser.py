"""
End to end, as users run it: ``twistd -n rtcsignal`` over TLS, with a
certificate from ``python -m twisted_signal.devcert``, and the room page in
real headless Chromium (Debian's, driven by Playwright) making real WebRTC
calls with fake camera and microphone.

The server and the browser run in a private network namespace that has only
a loopback interface when the test can make one (as root, with ``unshare``):
WebRTC works on the host's loopback too, but Chromium also talks to the
outside (Google account and update lookups, multicast DNS) whatever its
flags, and the namespace keeps every packet on 127.0.0.1.  Set
``RTCSIGNAL_TEST_NETNS=0`` to run in the host's network instead.

Without a usable Chromium the test is skipped, except under ``CI=true``,
where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
TWISTD = Path(sys.executable).with_name("twistd")
DOCS_SCREENSHOT = REPO / "docs" / "screenshot.png"
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

# Video frames decoded so far, per remote peer, from getStats().
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


# A browser whose user refuses the camera and microphone.
NO_DEVICES = """navigator.mediaDevices.getUserMedia = async () => {
    throw new DOMException("Permission denied", "NotAllowedError");
};"""

# signaling.socketUrl, run in the page: the socket is in the page's own
# folder, over wss: for https: pages, and carries the page's token.
SOCKET_URLS = """async () => {
    const { socketUrl } = await import(new URL("static/signaling.js", location.href));
    return [
        ["https://h.test/standup", "standup"],
        ["http://h.test:8080/rtc/standup?token=a.b.c&x=1#top", "standup"],
        ["https://h.test/a%20b", "a b"],
    ].map(([page, room]) => socketUrl(page, room).href);
}"""


# Every violation of the pages' Content-Security-Policy, to the console
# (where Chromium also reports what the policy blocked).
CSP_REPORTER = """document.addEventListener("securitypolicyviolation", (e) => {
    console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI}`);
});"""


def csp_violations(console: Sequence[str]) -> list[str]:
    return [m for m in console if "CSP violation" in m or "Content Security Policy" in m]


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


@pytest.fixture
def network() -> Iterator[Network]:
    network = private_network()
    yield network
    network.close()


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


@pytest.fixture
def server(network: Network, tmp_path: Path) -> Iterator[Server]:
    key, cert = make_certs(tmp_path / "certs")
    server = Server(network, tmp_path, key, cert)
    server.start()
    yield server
    server.close()


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
            message = f"Chromium cannot start: {e}"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
        yield browser
        browser.close()


@pytest.fixture
def browser(network: Network, tmp_path: Path) -> Iterator[Browser]:
    with chromium(network, tmp_path) as browser:
        yield browser


class Peer:
    """
    One person in the call: a page in a browser context of its own.
    """

    def __init__(
        self, browser: Browser, url: str | None, name: str, *, no_devices: bool = False
    ) -> None:
        self.name = name
        self.console: list[str] = []
        self.context = browser.new_context(
            ignore_https_errors=True, viewport={"width": 1024, "height": 640}
        )
        self.context.set_default_timeout(TIMEOUT_MS)
        self.context.add_init_script(CSP_REPORTER)
        if no_devices:
            self.context.add_init_script(NO_DEVICES)
        self.page: Page = self.context.new_page()
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"page error: {e}"))
        if url is not None:
            self.page.goto(url)

    @property
    def state(self) -> str:
        return str(self.page.evaluate("document.body.dataset.state"))

    @property
    def peer_id(self) -> str:
        return str(self.page.evaluate("window.rtcsignal.peerId"))

    def wait_for_state(self, state: str) -> None:
        self.page.wait_for_function(
            "(state) => document.body.dataset.state === state", arg=state, timeout=TIMEOUT_MS
        )

    def joined(self) -> str:
        self.wait_for_state("joined")
        return self.peer_id

    def frames(self) -> dict[str, int]:
        frames: dict[str, int] = self.page.evaluate(FRAMES_DECODED)
        return frames

    def sees(self, *others: Peer | str) -> None:
        """
        Wait until this page shows exactly these peers' videos, each with
        frames (videoWidth > 0) and decoding more and more (getStats).
        """
        ids = sorted(o if isinstance(o, str) else o.peer_id for o in others)
        self.page.wait_for_function(
            f"(ids) => JSON.stringify(({REMOTE_VIDEOS})()) === JSON.stringify(ids) "
            f"&& JSON.stringify(({ALL_REMOTE_VIDEOS})()) === JSON.stringify(ids)",
            arg=ids,
            timeout=TIMEOUT_MS,
        )
        before = self.frames()
        assert sorted(before) == ids, (self.name, before, ids)
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while True:
            now = self.frames()
            if all(now.get(i, 0) >= before[i] + 5 for i in ids):
                return
            assert time.monotonic() < deadline, f"{self.name}: frames stuck: {before} -> {now}"
            time.sleep(0.2)

    def close(self) -> None:
        self.context.close()

    def __repr__(self) -> str:
        return f"<{self.name}: " + "\n  ".join(self.console[-30:]) + ">"


class Call:
    """
    The people of one room, each in a browser context of their own.
    """

    def __init__(self, browser: Browser, url: str, shots: Path) -> None:
        self.browser = browser
        self.url = url
        self.shots = shots
        self.peers: list[Peer] = []
        self.everyone: list[Peer] = []

    def join(self, name: str, *, no_devices: bool = False) -> Peer:
        peer = Peer(self.browser, self.url, name, no_devices=no_devices)
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

    def join_from_landing_page(self, name: str, home: str, room: str) -> Peer:
        """
        Go to the landing page, try its "Generate" button, then type the
        room's name and press Enter.
        """
        peer = Peer(self.browser, None, name)
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

    def remove(self, peer: Peer) -> None:
        self.peers.remove(peer)
        peer.close()

    def screenshot(self, peer: Peer, name: str) -> Path:
        path = self.shots / f"{peer.name}-{name}.png"
        peer.page.screenshot(path=path)
        return path

    def close(self) -> None:
        for peer in self.peers:
            peer.close()


@pytest.fixture
def call(server: Server, browser: Browser, tmp_path: Path) -> Iterator[Call]:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    call = Call(browser, f"{server.url}/{ROOM}", shots)
    yield call
    for peer in call.peers:
        print(repr(peer))  # the pages' consoles: pytest shows them if the test failed
    call.close()


def test_video_call(server: Server, call: Call) -> None:
    # Two people: each sees the other.
    alice = call.join_from_landing_page("alice", f"{server.url}/", ROOM)
    bob = call.join("bob")
    alice.joined()
    bob.joined()
    alice.sees(bob)
    bob.sees(alice)
    assert alice.page.evaluate(SOCKET_URLS) == [
        "wss://h.test/socket/standup/",
        "ws://h.test:8080/rtc/socket/standup/?token=a.b.c",
        "wss://h.test/socket/a%20b/",
    ]
    check_controls(alice, bob)

    # A third one: a three-way mesh.
    carol = call.join("carol")
    carol.joined()
    alice.sees(bob, carol)
    bob.sees(alice, carol)
    carol.sees(alice, bob)
    expect(alice.page.locator("figure.remote .connection").first).to_have_text("connected")
    for peer in (bob, carol):
        call.screenshot(peer, "three-way")
    shot = call.screenshot(alice, "three-way")
    if os.environ.get("RTCSIGNAL_UPDATE_SCREENSHOT") == "1":
        # The README's picture: refreshed on request, not on every run.
        shutil.copyfile(shot, DOCS_SCREENSHOT)

    # A fourth one is over --max-peers: the page says so, and stops.
    dave = call.join("dave")
    dave.wait_for_state("error")
    expect(dave.page.get_by_text("This room is full")).to_be_visible()
    expect(dave.page.get_by_role("alert")).to_contain_text("Could not join room")
    call.screenshot(dave, "room-full")
    assert dave.page.evaluate(ALL_REMOTE_VIDEOS) == []
    assert alice.page.evaluate(ALL_REMOTE_VIDEOS) == sorted([bob.peer_id, carol.peer_id])
    call.remove(dave)

    # Carol leaves with the Leave button: her video goes from the others.
    carol_id = carol.peer_id
    carol.page.get_by_role("button", name="Leave").click()
    carol.wait_for_state("closed")
    alice.sees(bob)
    bob.sees(alice)
    assert carol_id not in alice.page.evaluate(ALL_REMOTE_VIDEOS)
    call.remove(carol)

    # The server crashes and comes back: the pages reconnect by themselves,
    # under new peer ids, and call each other again.
    old_ids = {alice.peer_id, bob.peer_id}
    server.kill()
    alice.wait_for_state("connecting")
    bob.wait_for_state("connecting")
    expect(alice.page.get_by_role("status")).to_contain_text("retrying")
    server.start()
    new_ids = {alice.joined(), bob.joined()}
    assert not new_ids & old_ids, (old_ids, new_ids)
    alice.sees(bob)
    bob.sees(alice)
    call.screenshot(alice, "after-restart")
    check_receive_only(call, alice, bob)
    check_security_headers(alice)
    assert call.csp_violations() == {}


def check_security_headers(peer: Peer) -> None:
    """
    The page the browsers just used came with the policy they obeyed.
    """
    headers = peer.page.evaluate(
        """async () => {
            const answer = await fetch(location.href);
            return Object.fromEntries(answer.headers.entries());
        }"""
    )
    assert "script-src 'self'" in headers["content-security-policy"], headers
    assert headers["referrer-policy"] == "no-referrer", headers


def check_receive_only(call: Call, alice: Peer, bob: Peer) -> None:
    """
    Someone without camera and microphone joins receive-only: they see the
    others, and the others see that their camera is off.
    """
    erin = call.join("erin", no_devices=True)
    erin.joined()
    expect(erin.page.get_by_role("alert")).to_contain_text("receive-only")
    erin.sees(alice, bob)
    erin_on_alice = alice.page.locator(f'figure[data-peer-tile="{erin.peer_id}"]')
    expect(erin_on_alice).to_have_attribute("data-video", "off")
    expect(erin_on_alice).to_have_attribute("data-connection", "connected")
    call.screenshot(erin, "receive-only")


def check_controls(alice: Peer, bob: Peer) -> None:
    """
    Alice mutes and turns her camera off, then on again: Bob's page shows
    it, and her video comes back with the new camera track.
    """
    alice_on_bob = bob.page.locator(f'figure[data-peer-tile="{alice.peer_id}"]')
    alice.page.get_by_role("button", name="Mute", exact=True).click()
    unmute = alice.page.get_by_role("button", name="Unmute", exact=True)
    expect(unmute).to_have_attribute("aria-pressed", "true")
    expect(alice_on_bob).to_have_attribute("data-audio", "off")
    alice.page.get_by_role("button", name="Camera off", exact=True).click()
    expect(alice_on_bob).to_have_attribute("data-video", "off")
    expect(alice_on_bob.get_by_text("camera off")).to_be_visible()
    alice.page.get_by_role("button", name="Camera on", exact=True).click()
    unmute.click()
    expect(alice_on_bob).to_have_attribute("data-video", "on")
    expect(alice_on_bob).to_have_attribute("data-audio", "on")
    bob.sees(alice)
