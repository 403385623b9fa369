"""
Idle connections (``make bench-idle``, also the end of ``make bench``): what
a connection that only keeps alive costs twisted-signal, in memory and in
CPU.

The server (``twistd rtcsignal`` with its defaults: a WebSocket ping every
20 s, rooms of two) runs pinned to core 0 and the load generator
(bench/loadgen.mjs's ``joins`` scenario: Node + ws, which answers pings) to
core 1.  The generator opens ``--peers`` connections, 100 at a time; once
every one is admitted the suite waits ``--settle`` seconds, then measures
for ``--seconds`` (several ping intervals): the server's resident memory
against before the joins, and the CPU it used while nothing but keepalive
happened.  It prints, and appends to bench/results/idle.jsonl:

- bytes of resident memory per idle connection, and so connections per GB;
- CPU per 10,000 idle connections, as a share of one core.

    .venv/bin/python bench/idle.py [--peers 10000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.suite import (  # noqa: E402  (the suite's helpers, run as a script)
    NODE,
    RESULTS,
    pinned,
    process_cpu,
    rss_bytes,
    twisted_signal,
    wait_for_quiet,
)

GB = 1_000_000_000


def measure(peers: int, settle: float, seconds: float) -> dict[str, float]:
    server = twisted_signal("twisted-signal")
    server.start()
    generator = None
    try:
        time.sleep(1.0)
        rss_before = rss_bytes(server.pid)
        options = {
            "protocol": "signal",
            "port": server.port,
            "path": "/",
            "scenario": "joins",
            "peers": peers,
            "concurrency": 100,
        }
        generator = subprocess.Popen(
            pinned(1, [NODE, str(HERE / "loadgen.mjs"), json.dumps(options)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE,
        )
        assert generator.stdout is not None and generator.stdin is not None
        for line in generator.stdout:  # {"mark": ...} lines, then {"ready": true}
            if '"ready"' in line:
                break
        else:
            raise SystemExit("the load generator did not get its peers in")
        time.sleep(settle)
        cpu_before, started = process_cpu(server.pid), time.monotonic()
        time.sleep(seconds)
        cpu = process_cpu(server.pid) - cpu_before
        wall = time.monotonic() - started
        rss_after = rss_bytes(server.pid)
        generator.stdin.write("done\n")
        generator.stdin.flush()
        generator.communicate(timeout=120)
    finally:
        if generator is not None and generator.poll() is None:
            generator.kill()
        server.stop()
    per_connection = (rss_after - rss_before) / peers
    return {
        "peers": peers,
        "seconds": round(wall, 1),
        "bytes_per_connection": round(per_connection),
        "connections_per_gb": round(GB / per_connection),
        "core_share_per_10k": round(cpu / wall * 10_000 / peers, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--settle", type=float, default=5.0, help="s after the joins (5)")
    parser.add_argument("--seconds", type=float, default=60.0, help="s measured (60)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.peers + 1024
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"--peers {args.peers} needs {needed} open files; the limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    wait_for_quiet(10.0)
    result: dict[str, float | str] = {
        **measure(args.peers, args.settle, args.seconds),
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "idle.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(
        f"{result['peers']} idle connections over {result['seconds']} s: "
        f"{result['bytes_per_connection']:,} bytes each "
        f"({result['connections_per_gb']:,} per GB), "
        f"{float(result['core_share_per_10k']) * 100:.2f}% of a core per 10,000 for keepalive"
    )


if __name__ == "__main__":
    main()
