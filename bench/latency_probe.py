"""
Where the tail of the latency figure comes from: runs the server in this
process as ``twistd -n rtcsignal`` would (pinned to core 0, logging at info
to /dev/null), drives it with bench/loadgen.mjs's open-loop scenario
(pinned to core 1), and reports, beside the generator's p50/p99/p99.9, the
server's garbage collections (how many, of which generation, their pauses)
and how late the reactor ran a 1 ms timer (its p99 and worst).

    .venv/bin/python bench/latency_probe.py [--rate 5000] [--seconds 5] [--freeze]
        [--threshold 700]

``--freeze`` calls ``gc.freeze()`` once the server has started;
``--threshold`` sets the youngest generation's collection threshold.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent))

from bench.suite import NODE, free_port, pinned, server_options  # noqa: E402


class Probe:
    """GC pauses and timer lateness, recorded as they happen."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self.before: list[tuple[int, float]] = []
        """The collections before the measured interval (joins, warm-up)."""
        self.lateness: list[float] = []
        self._started = 0.0
        self.on = False

    def gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            pause = (info["generation"], time.perf_counter() - self._started)
            (self.pauses if self.on else self.before).append(pause)

    def tick(self, expected: list[float], clock: Any) -> None:
        now = time.perf_counter()
        if self.on:
            self.lateness.append(now - expected[0])
        expected[0] = now + 0.001
        clock.callLater(0.001, self.tick, expected, clock)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() after start-up")
    parser.add_argument("--threshold", type=int, default=0)
    args = parser.parse_args()
    if os.sched_getaffinity(0) != {0} and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from twisted_signal.tap import Options, makeService

    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(open(os.devnull, "w"))],  # noqa: SIM115
        discardBuffer=True,
        redirectStandardIO=False,
    )
    if args.threshold:
        gc.set_threshold(args.threshold, *gc.get_threshold()[1:])
    port = free_port()
    options = Options()
    options.parseOptions(server_options(str(port)))
    server = makeService(options)
    server.startService()
    if args.freeze:
        gc.freeze()
    probe = Probe()
    gc.callbacks.append(probe.gc_callback)
    probe.tick([time.perf_counter() + 0.001], reactor)
    load = {
        "protocol": "signal",
        "port": port,
        "scenario": "latency",
        "groups": 50,
        "rate": args.rate,
        "size": 600,
        "window": 32,
        "seconds": args.seconds,
        "warmup": 2,
    }
    argv = pinned(1, [NODE, str(HERE / "loadgen.mjs"), json.dumps(load)])
    generator = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=HERE)
    result: dict[str, Any] = {}

    def poll() -> None:
        # The measured interval starts after the warm-up.
        if generator.poll() is None:
            probe.on = probe.on or time.monotonic() > started + 3
            reactor.callLater(0.1, poll)
            return
        assert generator.stdout is not None
        result.update(json.loads(generator.stdout.read().strip().splitlines()[-1]))
        reactor.stop()

    started = time.monotonic()
    reactor.callLater(0.1, poll)
    reactor.run()
    pauses = [d * 1e3 for _, d in probe.pauses]
    late = [d * 1e3 for d in probe.lateness]
    generations = [sum(1 for g, _ in probe.pauses if g == n) for n in range(3)]
    print(
        f"p50/p99/p99.9 {result['p50_ms']:.2f}/{result['p99_ms']:.2f}/{result['p999_ms']:.2f} ms"
        f" (achieved {result['achieved_per_s']:.0f}/s; generator {result['loadgen_cpu']:.2f})"
    )
    print(
        f"gc: {len(pauses)} collections {generations}, max {max(pauses, default=0):.2f} ms,"
        f" {sum(p > 1 for p in pauses)} over 1 ms, {sum(pauses):.1f} ms in all;"
        f" frozen objects {gc.get_freeze_count()}"
    )
    before = [d * 1e3 for _, d in probe.before]
    print(
        f"gc before the interval: {len(before)} collections,"
        f" {sum(g == 2 for g, _ in probe.before)} full, max {max(before, default=0):.2f} ms"
    )
    print(
        f"1 ms timer late by p50/p99/max {quantile(late, 0.5):.2f}/{quantile(late, 0.99):.2f}"
        f"/{max(late, default=0):.2f} ms ({len(late)} ticks)"
    )


if __name__ == "__main__":
    main()
