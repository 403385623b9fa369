"""
Real ``twistd -n rtcsignal`` processes of the installed package on free
loopback ports (`spawn_in`, behind the ``spawn`` fixture of conftest), and a
plain HTTP GET for them.

The package must be installed in the virtualenv (``make test`` does it):
twistd finds the plugin in site-packages, not in the source tree.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

TWISTD = Path(sys.executable).with_name("twistd")
START_TIMEOUT = 15.0
EXIT_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Twistd:
    """
    One ``twistd --pidfile= -n rtcsignal ...`` process; its stdout and
    stderr go to files in its working folder.
    """

    process: subprocess.Popen[bytes]
    folder: Path
    port: int

    @property
    def stdout(self) -> str:
        return (self.folder / "stdout").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.folder / "stderr").read_text(errors="replace")

    @property
    def output(self) -> str:
        return f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def socket_url(self, room: str, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/socket/{room}/" + (f"?{query}" if query else "")

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"twistd still running after {timeout}s\n{self.output}")

    def wait_ready(self) -> None:
        """
        Poll ``/healthz`` until it answers 200.
        """
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"twistd exited with {self.process.returncode}\n{self.output}")
            try:
                status, _, _ = get(self.url("/healthz"))
            except OSError:
                time.sleep(0.05)
                continue
            if status == 200:
                return
        pytest.fail(f"twistd did not answer /healthz within {START_TIMEOUT}s\n{self.output}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


Spawn = Callable[..., Twistd]


def spawn_in(folder: Path, processes: list[Twistd]) -> Spawn:
    counter = iter(range(1000))

    def spawn(
        *args: str, port: int | None = None, pythonpath: Path | None = None, ready: bool = True
    ) -> Twistd:
        """
        Start ``twistd rtcsignal`` listening on `port` (a free one by
        default), with `args`; with `ready`, wait until it is healthy.
        """
        if port is None:
            port = free_port()
        work = folder / f"twistd-{next(counter)}"
        work.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        argv = [str(TWISTD), "--pidfile=", "-n", "rtcsignal"]
        argv += ["--endpoint", f"tcp:{port}:interface=127.0.0.1", *args]
        with (work / "stdout").open("wb") as out, (work / "stderr").open("wb") as err:
            process = subprocess.Popen(argv, cwd=work, env=env, stdout=out, stderr=err)
        twistd = Twistd(process, work, port)
        processes.append(twistd)
        if ready:
            twistd.wait_ready()
        return twistd

    return spawn


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()
