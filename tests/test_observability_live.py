"""
Metrics and webhooks of a real ``twistd rtcsignal``: peers exchange
messages while the test scrapes ``/metrics``, a real Prometheus scrapes it
too and answers every query of the Grafana dashboard, and a receiver on
loopback verifies every webhook delivery.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .support import handshake_status, join, open_socket
from .support.twistd import Twistd, free_port, get, spawn_in
from .support.webhook_receiver import Receiver

pytestmark = pytest.mark.process

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "rtcsignal.json"
PROMETHEUS = shutil.which("prometheus")
SECRET = b"webhook secret for the tests"


def check_metrics_headers(port: int) -> None:
    """The metrics listener names no Twisted version either, 404s included."""
    for path in ("/metrics", "/nothing-here"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                headers = answer.headers
        except urllib.error.HTTPError as e:
            headers = e.headers
        assert headers["Server"] == "rtcsignal", (path, headers["Server"])
        assert headers["X-Content-Type-Options"] == "nosniff", path


def scrape(port: int) -> dict[str, float]:
    """`/metrics` as {"name{label=value,...}": value}, parsed by prometheus_client."""
    status, content_type, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def poll(what: str, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


class Prometheus:
    def __init__(self, folder: Path, target_port: int) -> None:
        assert PROMETHEUS is not None
        self.port = free_port()
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: rtcsignal\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        (folder / "data").mkdir()
        self.log = (folder / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        status, _, body = get(url)
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        try:
            result = self.query(expr)
        except (OSError, ValueError, AssertionError):
            return None
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def prometheus_binary() -> str:
    if PROMETHEUS is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is not installed (Debian package prometheus)")
        pytest.skip("prometheus is not installed")
    return PROMETHEUS


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Twistd, int, Receiver, list[Twistd]]]:
    processes: list[Twistd] = []
    metrics_port = free_port()
    with Receiver(SECRET) as receiver:
        (tmp_path / "secret").write_text(SECRET.decode() + "\n")
        try:
            twistd = spawn_in(tmp_path, processes)(
                "--metrics-endpoint",
                f"tcp:{metrics_port}:interface=127.0.0.1",
                "--webhook",
                receiver.url,
                "--webhook-secret-file",
                str(tmp_path / "secret"),
                "--room",
                "full:1",
                "--rate-limit",
                "5/1",
                "--rate-burst",
                "20",
            )
            yield twistd, metrics_port, receiver, processes
        finally:
            for process in processes:
                process.kill()


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def make_traffic(twistd: Twistd) -> list[Any]:
    """Peers that talk, flood, err, get refused: every series moves."""
    a = join(twistd.socket_url("demo"))
    b = join(twistd.socket_url("demo"))
    assert a.recv()["event"] == "joined"
    a.send_raw("not json")
    assert a.recv()["data"]["description"] == "Invalid JSON"
    for i in range(25):  # a burst of 19 more, then the rate limit drops the rest
        a.send("candidate", "all", i)
    got = [b.recv()["data"] for _ in range(19)]
    assert got == list(range(19))
    assert a.recv()["data"]["description"] == "Rate limited"
    c = join(twistd.socket_url("full"))
    refused = open_socket(twistd.socket_url("full"))
    assert json.loads(refused.recv(timeout=5))["data"]["details"] == "room_is_full"
    assert handshake_status(twistd.socket_url("bad%20name")) == 400
    d = join(twistd.socket_url("demo", "resume=not-a-token"))

    return [a, b, c, d, refused]


def check_samples(samples: dict[str, float]) -> None:
    assert samples["rtcsignal_peers"] == 4
    assert samples["rtcsignal_rooms"] == 2
    assert samples["rtcsignal_connections_total"] == 5
    assert samples["rtcsignal_messages_forwarded_total"] >= 19
    assert (
        samples["rtcsignal_forward_seconds_count"]
        == (samples["rtcsignal_messages_forwarded_total"])
    )
    assert (
        samples["rtcsignal_forward_seconds_bucket{le=+Inf}"]
        == (samples["rtcsignal_forward_seconds_count"])
    )
    assert samples["rtcsignal_errors_total{description=Invalid JSON}"] == 1
    assert samples["rtcsignal_errors_total{description=Rate limited}"] >= 1
    assert samples["rtcsignal_rate_limited_total"] >= 1
    assert samples["rtcsignal_joins_refused_total{reason=room_is_full}"] == 1
    assert samples["rtcsignal_handshake_rejections_total{status=400}"] == 1
    assert samples["rtcsignal_resumes_total{outcome=refused}"] == 1
    assert samples["rtcsignal_closes_total{code=1000}"] >= 0
    assert "process_resident_memory_bytes" in samples


def test_scrape_graph_and_subscribe(
    world: tuple[Twistd, int, Receiver, list[Twistd]], prometheus_binary: str, tmp_path: Path
) -> None:
    twistd, metrics_port, receiver, _ = world
    prometheus = Prometheus(tmp_path, metrics_port)
    try:
        poll("Prometheus to scrape the server", lambda: prometheus.value("up") == 1.0)
        clients = make_traffic(twistd)

        samples = scrape(metrics_port)
        check_samples(samples)
        check_metrics_headers(metrics_port)
        poll(
            "the webhooks to be delivered",
            lambda: (
                scrape(metrics_port)["rtcsignal_webhook_deliveries_total{outcome=delivered}"] >= 6
            ),
        )

        # Prometheus sees the same, and every query of the dashboard answers.
        poll("Prometheus to see the peers", lambda: prometheus.value("rtcsignal_peers") == 4.0)
        forwarded = samples["rtcsignal_messages_forwarded_total"]
        poll(
            "Prometheus to see the messages",
            lambda: prometheus.value("rtcsignal_messages_forwarded_total") == forwarded,
        )
        time.sleep(1.5)  # one more scrape, so that rate() has two points after the traffic
        for expr in dashboard_queries():
            result = prometheus.query(expr)
            assert result, f"no data for {expr}"
            if "histogram_quantile" in expr:
                assert not math.isnan(float(result[0]["value"][1])), expr
        for client in clients:
            client.close()
    finally:
        prometheus.stop()

    # Every event arrived, verified by the snippet of docs/operations.md.
    def events_of(room: str) -> list[tuple[str, Any]]:
        return [(e["event"], e["peer_id"]) for e in receiver.events if e["room"] == room]

    poll("room_finished for demo", lambda: ("room_finished", None) in events_of("demo"))
    assert receiver.bad == []
    demo = events_of("demo")
    assert demo[0] == ("room_started", None) and demo[-1] == ("room_finished", None)
    joined = [p for e, p in demo if e == "peer_joined"]
    left = [p for e, p in demo if e == "peer_left"]
    assert len(joined) == 3 and sorted(joined) == sorted(left)
    assert ("room_started", None) in events_of("full")
    assert len(set(receiver.deliveries)) == len(receiver.deliveries)


def test_a_busy_metrics_port_is_one_line_and_a_failure(tmp_path: Path) -> None:
    processes: list[Twistd] = []
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        try:
            twistd = spawn_in(tmp_path, processes)(
                "--metrics-endpoint", f"tcp:{port}:interface=127.0.0.1", ready=False
            )
            assert twistd.wait_exit() != 0, twistd.output
            output = twistd.stdout + twistd.stderr
            assert f"cannot listen on 127.0.0.1:{port}" in output
            assert "Traceback" not in output
        finally:
            for process in processes:
                process.kill()
