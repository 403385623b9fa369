"""
A real ``redis-server`` and real ``twistd rtcsignal --redis`` nodes on free
loopback ports, for the cluster tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .twistd import Spawn, Twistd, free_port

#: Short leases keep the failure tests fast (docs/cluster.md: --cluster-lease).
LEASE = 2.0


def _redis_server() -> str:
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(path):
        message = "redis-server is not installed (Debian package redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class Redis:
    """One ``redis-server`` with no persistence, restartable on its port."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()
    """More ``redis-server`` options (TLS, passwords)."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.folder), *self.args]
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                time.sleep(0.05)
        pytest.fail("redis-server did not start")

    def cli(self, *args: str) -> str:
        """What ``redis-cli`` prints for one command to this server."""
        return subprocess.run(
            [shutil.which("redis-cli") or "redis-cli", "-p", str(self.port), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout

    def command_calls(self) -> dict[str, int]:
        """How often each command ran since the start (``INFO commandstats``)."""
        calls: dict[str, int] = {}
        for line in self.cli("INFO", "commandstats").splitlines():
            name, _, stats = line.partition(":")
            if name.startswith("cmdstat_"):
                fields = dict(item.split("=", 1) for item in stats.split(","))
                calls[name.removeprefix("cmdstat_")] = int(fields["calls"])
        return calls

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


@dataclass
class Cluster:
    redis: Redis
    spawn: Spawn

    def node(self, *args: str, lease: float = LEASE, pythonpath: Path | None = None) -> Twistd:
        return self.spawn(
            "--redis",
            self.redis.url,
            "--cluster-lease",
            str(lease),
            "--resume-window",
            "0",
            *args,
            pythonpath=pythonpath,
        )
