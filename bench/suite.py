"""
The benchmark suite (``make bench``): twisted-signal side by side with
peerjs-server and with a naive relay on the same stack, in one run.

Each server runs pinned to core 0 and the load generator (bench/loadgen.mjs,
Node + ws) to core 1.  Before each run the suite waits for the cores to be
quiet; a run during which other processes used more than a quarter of a core
is repeated once (then kept and flagged).  Every run starts fresh
processes; each figure is the median of the runs.  Figures:

1. throughput: 50 pairs, ~600-byte unicast ``candidate`` messages, at most 32
   in flight per peer; deliveries per second after a warm-up;
2. latency: one-way p50/p99/p99.9 at 2,000 and 5,000 msgs/s, open loop;
3. joins per second (2,000 peers, 100 at a time, until ``authenticated``)
   and resident memory per idle connection;
4. fan-out: rooms of 8 peers sending to ``"all"``, deliveries per second;
5. figure 1 with ``--metrics-endpoint`` on, when the server has the option.

Results are appended to bench/results/results.jsonl (one JSON object per
run) and bench/results/summary.json; a PNG per figure is written unless
--no-plots.  ``--smoke`` is a few-second run of small counts without
peerjs-server, for ``make test``.

    .venv/bin/python bench/suite.py [--runs 3] [--smoke] [--only throughput,joins]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
"""Where results go (a smoke run writes to a temporary folder instead)."""
BIN = Path(sys.executable).parent
NODE = shutil.which("node") or "/usr/bin/node"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
QUIET = 0.25
"""Cores' worth of CPU that other processes may use during a run."""
RUN_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def machine_busy() -> float:
    """CPU seconds used by the whole machine so far (all cores)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICKS


def pinned(core: int, argv: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    if taskset is None or (os.cpu_count() or 1) < 2:
        return argv
    return [taskset, "-c", str(core), *argv]


def wait_for_quiet(limit: float) -> float:
    """Wait (at most `limit` s) for the machine to be nearly idle; return its load."""
    deadline = time.monotonic() + limit
    while True:
        before = machine_busy()
        time.sleep(0.5)
        load = (machine_busy() - before) / 0.5
        if load < QUIET or time.monotonic() > deadline:
            return load


@dataclass
class Server:
    name: str
    argv: list[str]
    protocol: str = "signal"
    path: str = "/"
    """Where a "peerjs" server serves peerjs (peerjs-server: /)."""
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.process is not None:
            return  # a smoke run reuses the server
        self.port = free_port()
        argv = [a.replace("PORT", str(self.port)) for a in self.argv]
        self.process = subprocess.Popen(
            pinned(0, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=HERE
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited at start: {argv}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit(f"{self.name} did not start")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


def server_options(port: str) -> list[str]:
    """The options of `twistd rtcsignal` in every figure."""
    return [
        "--max-peers",
        "8",
        # A benchmark floods on purpose: lift the per-peer rate limit.
        "--rate-limit",
        "10000000/1",
        "--rate-burst",
        "10000000",
        "--endpoint",
        f"tcp:{port}:interface=127.0.0.1:backlog=1024",
    ]


def twisted_signal(name: str, *extra: str) -> Server:
    return Server(
        name,
        [
            str(BIN / "twistd"),
            "--pidfile=",
            "-n",
            "rtcsignal",
            *server_options("PORT"),
            *extra,
        ],
    )


def has_metrics_option() -> bool:
    done = subprocess.run(
        [str(BIN / "twistd"), "rtcsignal", "--help"], capture_output=True, text=True, check=False
    )
    return "--metrics-endpoint" in done.stdout


def servers(with_peerjs: bool, with_metrics: bool) -> dict[str, Server]:
    found = {
        "twisted-signal": twisted_signal("twisted-signal"),
        "naive relay": Server(
            "naive relay", [sys.executable, str(HERE / "baseline_server.py"), "PORT"]
        ),
    }
    if with_metrics:
        metrics = f"tcp:{free_port()}:interface=127.0.0.1"
        found["twisted-signal + metrics"] = twisted_signal(
            "twisted-signal + metrics", "--metrics-endpoint", metrics
        )
    if with_peerjs:
        peerjs = HERE / "node_modules" / "peer" / "dist" / "bin" / "peerjs.js"
        found["peerjs-server"] = Server(
            "peerjs-server",
            [NODE, str(peerjs), "--port", "PORT", "--host", "127.0.0.1"],
            protocol="peerjs",
        )
        # Like with like: the same peerjs load against this server's front.
        front = twisted_signal("twisted-signal peerjs", "--peerjs", "/peerjs/")
        found["twisted-signal peerjs"] = replace(front, protocol="peerjs", path="/peerjs/")
    return found


@dataclass
class Run:
    figure: str
    server: str
    values: dict[str, float]
    server_cpu: float
    other_load: float
    disturbed: bool
    attempt: int
    extra: dict[str, Any] = field(default_factory=dict)


def run_loadgen(
    server: Server,
    options: dict[str, Any],
    on_ready: Callable[[], None],
    on_mark: Callable[[str], None],
) -> Any:
    argv = pinned(1, [NODE, str(HERE / "loadgen.mjs"), json.dumps(options)])
    gen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=HERE, text=True)
    assert gen.stdin is not None and gen.stdout is not None
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        for line in gen.stdout:
            message = json.loads(line)
            if "mark" in message:
                on_mark(message["mark"])
                continue
            if message.get("ready"):
                on_ready()
                gen.stdin.write("go\n")
                gen.stdin.flush()
                continue
            if gen.wait(max(1.0, deadline - time.monotonic())) != 0:
                raise SystemExit(f"load generator failed against {server.name}")
            return message
        raise SystemExit(f"load generator failed against {server.name} (exit {gen.wait(10)})")
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait(10)


def one_run(figure: str, server: Server, options: dict[str, Any], attempt: int, fresh: bool) -> Run:
    server.start()
    extra: dict[str, Any] = {}
    try:
        if fresh:
            time.sleep(0.3)
        rss_before = rss_bytes(server.pid)

        def on_ready() -> None:
            time.sleep(1.0)  # let the connections go idle
            extra["rss_per_connection_kb"] = (
                (rss_bytes(server.pid) - rss_before) / 1024 / (options["peers"])
            )

        marks: dict[str, float] = {}

        def on_mark(what: str) -> None:
            marks[what] = process_cpu(server.pid)

        cpu_before, busy_before, started = process_cpu(server.pid), machine_busy(), time.time()
        options = {**options, "protocol": server.protocol, "port": server.port}
        if server.protocol == "peerjs":
            options["path"] = server.path
        result = run_loadgen(server, options, on_ready, on_mark)
        wall = time.time() - started
        server_cpu = process_cpu(server.pid) - cpu_before
        ours = server_cpu + float(result.get("loadgen_cpu_seconds", 0))
        other = max(0.0, (machine_busy() - busy_before - ours) / wall)
    finally:
        if fresh:
            server.stop()
    values = {k: float(v) for k, v in result.items() if isinstance(v, (int, float))}
    values.update(extra)
    # The server's CPU per unit of work, over the measured interval only: on
    # a shared machine it holds steadier than rates, which follow the share
    # of a core that the server got.
    measured = marks.get("stop", 0.0) - marks.get("start", 0.0)
    if values.get("delivered"):
        values["cpu_us_per_delivery"] = measured / values["delivered"] * 1e6
    if values.get("joins_per_s"):
        values["cpu_ms_per_join"] = measured / values["peers"] * 1e3
    values["server_cpu"] = server_cpu / wall
    return Run(figure, server.name, values, server_cpu / wall, other, other > QUIET, attempt)


@dataclass
class Patience:
    """How long a run waits for quiet cores, and how often a disturbed one is redone."""

    wait: float = 10.0
    retries: int = 1


def measure(
    figure: str,
    server: Server,
    options: dict[str, Any],
    runs: int,
    *,
    patience: Patience | None,
    out: Path,
) -> list[Run]:
    """
    `runs` fresh-process runs; with `patience`, each waits for quiet cores
    first and is repeated when other load disturbed it.
    """
    kept = []
    for _ in range(runs):
        attempts = 1 + (patience.retries if patience else 0)
        for attempt in range(attempts):
            if patience:
                wait_for_quiet(patience.wait)
            run = one_run(figure, server, options, attempt, fresh=patience is not None)
            if not run.disturbed or patience is None:
                break
            print(
                f"  {figure}/{server.name}: disturbed (others used {run.other_load:.2f} "
                "cores), again"
                if attempt < attempts - 1
                else "  kept, flagged",
                flush=True,
            )
        kept.append(run)
        with (out / "results.jsonl").open("a") as f:
            f.write(json.dumps({"at": time.time(), **run.__dict__}) + "\n")
    return kept


def figures(smoke: bool) -> dict[str, list[tuple[str, dict[str, Any], list[str]]]]:
    """Per figure: (label, load generator options, the values it reports)."""
    pairs, seconds, warmup = (4, 0.5, 0.2) if smoke else (50, 10, 2)
    base = {"size": 600, "window": 32, "seconds": seconds, "warmup": warmup}
    throughput = {**base, "scenario": "throughput", "groups": pairs}
    return {
        "throughput": [("", throughput, ["deliveries_per_s", "cpu_us_per_delivery"])],
        "latency": [
            (
                f"@{rate}",
                {
                    **base,
                    "scenario": "latency",
                    "groups": pairs,
                    "rate": rate,
                    "seconds": max(seconds, 5) if not smoke else seconds,
                },
                ["p50_ms", "p99_ms", "p999_ms"],
            )
            for rate in ((200,) if smoke else (2000, 5000))
        ],
        "joins": [
            (
                "",
                {
                    "scenario": "joins",
                    "peers": 100 if smoke else 2000,
                    "concurrency": 10 if smoke else 100,
                },
                ["joins_per_s", "rss_per_connection_kb", "cpu_ms_per_join"],
            )
        ],
        "fanout": [
            (
                "",
                {**base, "scenario": "fanout", "groups": 2 if smoke else 12, "room_size": 8},
                ["deliveries_per_s", "cpu_us_per_delivery"],
            )
        ],
        "metrics": [("", throughput, ["deliveries_per_s", "cpu_us_per_delivery"])],
    }


def median_of(runs: list[Run], key: str) -> float:
    return statistics.median(r.values[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (3; smoke 1)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated figures")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--quiet-wait", type=float, default=10.0, help="s to wait for quiet (10)")
    parser.add_argument("--retries", type=int, default=1, help="redo a disturbed run (1)")
    args = parser.parse_args()
    # Stopped from outside, stop the servers and generators we started too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: terminated"))
    runs = args.runs or (1 if args.smoke else 3)
    out = Path(tempfile.mkdtemp(prefix="bench-smoke-")) if args.smoke else RESULTS
    out.mkdir(exist_ok=True)
    if not (HERE / "node_modules" / "ws").is_dir():
        raise SystemExit("bench/node_modules is missing: run `make bench` (it runs npm ci)")
    from autobahn.websocket import USES_NVX

    if not USES_NVX:
        raise SystemExit("Autobahn runs without its NVX accelerators: the numbers would lie")
    with_metrics = has_metrics_option()
    started = time.monotonic()
    patience = None if args.smoke else Patience(args.quiet_wait, args.retries)
    summary = run_figures(args.smoke, args.only, runs, with_metrics, out=out, patience=patience)
    versions = environment(with_metrics)
    (out / "summary.json").write_text(
        json.dumps({"at": time.time(), "versions": versions, "figures": summary}, indent=1)
    )
    print(table(summary, with_metrics))
    print(targets(summary))
    print(f"({time.monotonic() - started:.0f} s; {json.dumps(versions)})")
    if not args.no_plots:
        plot(summary, out)
    if args.smoke:
        check_smoke(summary)
        shutil.rmtree(out)


def run_figures(
    smoke: bool, only: str, runs: int, with_metrics: bool, *, out: Path, patience: Patience | None
) -> dict[str, dict[str, dict[str, float]]]:
    """Every figure on every server: the medians, by figure and server."""
    known = servers(with_peerjs=not smoke, with_metrics=with_metrics)
    wanted = [f for f in only.split(",") if f] or list(figures(smoke))
    summary: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for figure, variants in figures(smoke).items():
            if figure not in wanted:
                continue
            if figure == "metrics":
                names = ["twisted-signal + metrics"] if with_metrics else []
            else:
                names = [n for n in known if n != "twisted-signal + metrics"]
            for label, options, keys in variants:
                row = summary.setdefault(figure + label, {})
                # The servers take turns, run by run: load from elsewhere
                # that comes and goes then falls on all of them alike,
                # rather than on whichever server's runs it met.
                kept: dict[str, list[Run]] = {name: [] for name in names}
                for n in range(runs):
                    for name in names:
                        print(f"{figure}{label}: {name} ({n + 1}/{runs})", flush=True)
                        kept[name] += measure(
                            figure + label, known[name], options, 1, patience=patience, out=out
                        )
                reported = [*keys, "server_cpu", "loadgen_cpu", "received", "achieved_per_s"]
                for name, runs_kept in kept.items():
                    row[name] = {
                        k: median_of(runs_kept, k) for k in reported if k in runs_kept[0].values
                    }
                    row[name]["disturbed_runs"] = sum(r.disturbed for r in runs_kept)
    finally:
        for server in known.values():
            server.stop()
    return summary


def check_smoke(summary: dict[str, dict[str, dict[str, float]]]) -> None:
    """A smoke run proves the suite works: every figure measured something."""
    empty = [
        f"{figure}/{name}/{key}"
        for figure, row in summary.items()
        for name, values in row.items()
        for key in ("deliveries_per_s", "joins_per_s", "received", "rss_per_connection_kb")
        if key in values and not values[key] > 0
    ]
    if len(summary) < 4 or empty:
        raise SystemExit(f"bench smoke: nothing measured for {empty or 'some figures'}")
    print("bench smoke: every figure measured")


def environment(with_metrics: bool) -> dict[str, Any]:
    from importlib.metadata import version

    node = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=False)
    peer = HERE / "node_modules" / "peer" / "package.json"
    return {
        "python": sys.version.split()[0],
        "twisted": version("twisted"),
        "autobahn": version("autobahn"),
        "orjson": version("orjson"),
        "node": node.stdout.strip(),
        "peer": json.loads(peer.read_text())["version"] if peer.exists() else None,
        "metrics_option": with_metrics,
        "cores": os.cpu_count(),
    }


COLUMNS = [
    ("throughput", "deliveries_per_s", "relayed msgs/s", "higher"),
    ("throughput", "cpu_us_per_delivery", "server us CPU per msg", "lower"),
    ("joins", "joins_per_s", "joins/s", "higher"),
    ("joins", "cpu_ms_per_join", "server ms CPU per join", "lower"),
    ("joins", "rss_per_connection_kb", "KB per idle conn", "lower"),
    ("latency@2000", "p99_ms", "p99 @2000/s ms", "lower"),
    ("latency@5000", "p50_ms", "p50 @5000/s ms", "lower"),
    ("latency@5000", "p99_ms", "p99 @5000/s ms", "lower"),
    ("latency@5000", "p999_ms", "p99.9 @5000/s ms", "lower"),
    ("fanout", "deliveries_per_s", "fan-out deliveries/s", "higher"),
    ("fanout", "cpu_us_per_delivery", "fan-out us CPU/delivery", "lower"),
]


def columns(summary: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    found = [c for c in COLUMNS if c[0] in summary]
    for figure in summary:  # the smoke run's rates
        if figure.startswith("latency@") and not any(c[0] == figure for c in found):
            found.append((figure, "p99_ms", f"p99 {figure[7:]}/s ms", "lower"))
    return found


def table(summary: dict[str, dict[str, dict[str, float]]], with_metrics: bool) -> str:
    names = sorted({n for row in summary.values() for n in row})
    lines = [f"{'figure':<24}" + "".join(f"{n:>26}" for n in names)]
    for figure, key, title, _ in columns(summary):
        row = summary.get(figure)
        if not row:
            continue
        cells = []
        for name in names:
            value = row.get(name, {}).get(key)
            if value is None:
                cells.append(f"{'-':>26}")
                continue
            ratios = []
            for ref, short in (("peerjs-server", "pj"), ("naive relay", "nv")):
                other = row.get(ref, {}).get(key)
                if other and name != ref:
                    ratios.append(f"{value / other:.2f}x{short}")
            cells.append(f"{value:>10.4g} {' '.join(ratios):>15}")
        lines.append(f"{title:<24}" + "".join(cells))
    metrics = summary.get("metrics", {}).get("twisted-signal + metrics")
    plain = summary.get("throughput", {}).get("twisted-signal")
    if metrics and plain:
        ratio = metrics["deliveries_per_s"] / plain["deliveries_per_s"]
        lines.append(
            f"{'with --metrics-endpoint':<24}{metrics['deliveries_per_s']:>10.4g} msgs/s, "
            f"{ratio:.2f}x without"
        )
    elif not with_metrics:
        lines.append(f"{'with --metrics-endpoint':<24}n/a (the server has no such option)")
    return "\n".join(lines)


TARGETS = [
    # figure, key, reference server, the bound on twisted-signal / reference, higher is better
    ("throughput", "deliveries_per_s", "naive relay", 0.90, True),
    ("throughput", "cpu_us_per_delivery", "naive relay", 1 / 0.90, False),
    ("joins", "joins_per_s", "peerjs-server", 0.80, True),
    ("joins", "cpu_ms_per_join", "peerjs-server", 1 / 0.80, False),
    ("latency@5000", "p99_ms", "peerjs-server", 1.5, False),
    ("joins", "rss_per_connection_kb", "peerjs-server", 0.75, False),
]
"""The targets, each a ratio of twisted-signal's figure to a reference
server's in the same run (CPU ratios are the rate targets' inverses: where
the generator's core is the limit, rates understate the faster server)."""
SATURATED = 0.9
"""A load generator using this much of its core may be what limits a rate."""


def targets(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """Each target, the ratio measured in this run, and whether it is met."""
    lines = [f"{'target (twisted-signal / reference)':<58}{'measured':>9}  met"]
    for figure, key, ref, bound, higher in TARGETS:
        row = summary.get(figure, {})
        ours, theirs = row.get("twisted-signal", {}), row.get(ref, {})
        if key not in ours or not theirs.get(key):
            continue
        ratio = ours[key] / theirs[key]
        met = ratio >= bound if higher else ratio <= bound
        title = f"{figure} {key} vs {ref} {'>=' if higher else '<='} {bound:.2f}x"
        notes = [
            f"generator at {values['loadgen_cpu']:.2f} of a core against {name}"
            for name, values in ((ref, theirs), ("twisted-signal", ours))
            if key.endswith("_per_s") and values.get("loadgen_cpu", 0) >= SATURATED
        ]
        note = f"  ({'; '.join(notes)})" if notes else ""
        lines.append(f"{title:<58}{ratio:>8.2f}x  {'yes' if met else 'NO'}{note}")
    return "\n".join(lines)


def plot(summary: dict[str, dict[str, dict[str, float]]], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plots: matplotlib is missing (pip install '.[bench]')")
        return
    for figure, key, title, better in columns(summary):
        row = summary.get(figure)
        if not row:
            continue
        names = [n for n in row if key in row[n]]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.bar(names, [row[n][key] for n in names], color="#4a7bb7")
        ax.set_title(f"{title} ({better} is better)")
        ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{figure}-{key}.png", dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    main()
