"""
Calls come back after a network outage: in the private network of
``tests/support/browser.py``, an nftables rule drops every UDP packet (all the media,
none of the signaling, which is TCP) for 12 s in the middle of three calls
at once, one per pair of browsers: Chromium-Chromium, Chromium then Firefox,
Firefox then Chromium (who joins first makes the first offer).  Within 15 s
of the outage's end, video flows again both ways in every call.

The outage is repeated ``RTCSIGNAL_OUTAGE_RUNS`` times (2 by default;
``make test-outage RUNS=10`` for more), and the test reports how long each
call took to come back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any

import pytest
from playwright.sync_api import Browser

from .support.browser import Network, Peer, Server, open_chromium, open_firefox, unavailable
from .support.firefox import Firefox

OUTAGE_S = 12.0
# Video flows again within this long after the outage ends.
RECOVERY_S = 15.0
RUNS = int(os.environ.get("RTCSIGNAL_OUTAGE_RUNS", "2"))
TABLE = "rtcsignal_outage"
# Each run takes up to OUTAGE_S + RECOVERY_S, and a little more.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(90 + RUNS * 45)]
DROP_UDP = f"""table inet {TABLE} {{
    chain output {{
        type filter hook output priority 0; policy accept;
        meta l4proto udp drop
    }}
}}
"""


def nft(network: Network, *args: str, rules: str | None = None) -> None:
    done = subprocess.run(
        network.command(["nft", *args]), input=rules, text=True, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr


def flowing(peers: list[Peer[Any]], seconds: float = 1.0) -> dict[str, bool]:
    """
    For each page and each of its remote peers ("<page>:<peer>"): whether
    its video decoded and painted at least 5 more frames in `seconds`.
    """
    before = [(peer.frames(), peer.painted()) for peer in peers]
    time.sleep(seconds)
    flows: dict[str, bool] = {}
    for peer, (decoded, painted) in zip(peers, before, strict=True):
        decoded_now, painted_now = peer.frames(), peer.painted()
        for remote in decoded_now:
            flows[f"{peer.name}:{remote[:4]}"] = (
                decoded_now[remote] >= decoded.get(remote, 0) + 5
                and painted_now.get(remote, 0) >= painted.get(remote, 0) + 5
            )
    return flows


def test_calls_come_back_after_a_udp_outage(
    network: Network, server: Server, browser: Browser, firefox: Firefox
) -> None:
    if not network.private or shutil.which("nft") is None:
        unavailable("the outage needs a private network namespace (root, unshare) and nft")
    pairs: dict[str, list[Peer[Any]]] = {}
    everyone: list[Peer[Any]] = []
    try:
        for room, browsers in (("cc", "cc"), ("cf", "cf"), ("fc", "fc")):
            url = f"{server.url}/outage-{room}"
            pair: list[Peer[Any]] = []
            for n, kind in enumerate(browsers):
                name = f"{room}-{n + 1}{kind}"
                peer = (
                    open_chromium(browser, url, name)
                    if kind == "c"
                    else open_firefox(firefox, url, name)
                )
                everyone.append(peer)
                pair.append(peer)
                peer.joined()  # the first one joins, then the second one
            pairs[room] = pair
        for first, second in pairs.values():
            first.sees(second)
            second.sees(first)

        results: list[dict[str, float | None]] = []
        for run in range(RUNS):
            results.append(outage(network, pairs))
            print(f"run {run + 1}: seconds to recover: {results[-1]}")
            if None in results[-1].values() and not back_later(everyone):
                break  # a call that did not come back at all cannot be tested again
        good = sum(None not in run.values() for run in results)
        print(f"{good} of {RUNS} runs: every call back within {RECOVERY_S} s: {results}")
        assert good == RUNS, results
    finally:
        if table_exists(network):
            nft(network, "delete", "table", "inet", TABLE)
        for peer in everyone:
            print(repr(peer))  # the pages' consoles: pytest shows them if the test failed
            peer.close()


def back_later(everyone: list[Peer[Any]], timeout: float = 30) -> bool:
    """
    After a run that failed: whether every call comes back within `timeout`.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flows = flowing(everyone)
        if len(flows) == len(everyone) and all(flows.values()):
            return True
    return False


def table_exists(network: Network) -> bool:
    done = subprocess.run(
        network.command(["nft", "list", "table", "inet", TABLE]), capture_output=True, check=False
    )
    return done.returncode == 0


def outage(network: Network, pairs: dict[str, list[Peer[Any]]]) -> dict[str, float | None]:
    """
    Drop UDP for `OUTAGE_S`; for each call, how long after the outage video
    flowed both ways again (None: not within `RECOVERY_S`).
    """
    everyone = [peer for pair in pairs.values() for peer in pair]
    before = flowing(everyone)
    assert len(before) == len(everyone) and all(before.values()), before
    nft(network, "-f", "-", rules=DROP_UDP)
    started = time.monotonic()
    time.sleep(OUTAGE_S - 2)
    # The media really stopped.
    stopped = flowing(everyone)
    assert not any(stopped.values()), stopped
    time.sleep(max(0.0, started + OUTAGE_S - time.monotonic()))
    nft(network, "delete", "table", "inet", TABLE)
    ended = time.monotonic()
    recovered: dict[str, float | None] = dict.fromkeys(pairs)
    while time.monotonic() < ended + RECOVERY_S and None in recovered.values():
        for room, pair in pairs.items():
            flows = flowing(pair, 0.5)
            if recovered[room] is None and len(flows) == len(pair) and all(flows.values()):
                recovered[room] = round(time.monotonic() - ended, 1)
    return recovered
