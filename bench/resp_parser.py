"""
The Redis reply parser on the replies cluster mode reads: this project's
`_Parser` against ``hiredis`` (the C parser redis-py uses), when that is
installed.  Each shape is fed whole and in 16 KiB pieces (what a socket
read gives); the figure is the median CPU time of this process per reply (other
processes on a shared machine count less than on a wall clock), and per relayed
message for the stream reads.

    python bench/resp_parser.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections.abc import Callable
from typing import Any

from twisted_signal.cluster.resp import RedisError, _Parser, encode
from twisted_signal.message import Message

MESSAGE = (
    b'{"event":"candidate","data":{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 '
    b'54321 typ host","sdpMid":"0"},"from":"1b4e28ba-2fa1-11d2-883f-0016d3cca427",'
    b'"to":["6fa459ea-ee8a-3ca4-894e-db77e160355e"]}'
)
PEER = b"1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def resp(value: Any) -> bytes:
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, str):
        return b"+%s\r\n" % value.encode()
    return b"*%d\r\n" % len(value) + b"".join(resp(v) for v in value)


def room_stream(count: int, message: bytes = MESSAGE) -> bytes:
    """XREAD of a room's stream: `count` submitted messages."""
    entries = [
        [b"1700000000000-%d" % i, [b"op", b"submit", b"peer", PEER, b"message", message]]
        for i in range(count)
    ]
    return resp([[b"rtcsignal:room:r:in", entries]])


def inbox(count: int) -> bytes:
    """XREAD of a node's inbox: `count` deliveries."""
    fields = [b"room", b"r", b"epoch", b"3", b"peer", PEER, b"kind", b"send", b"data", MESSAGE]
    entries = [[b"1700000000000-%d" % i, fields] for i in range(count)]
    return resp([[b"rtcsignal:inbox:n1", entries]])


#: (name, reply bytes, relayed messages in it)
SHAPES: list[tuple[str, bytes, int]] = [
    ("+OK / :1 (XTRIM, RENEW)", resp("OK"), 0),
    ("XADD id", resp(b"1700000000000-0"), 0),
    ("EVAL ACQUIRE [1, id]", resp([1, b"1700000000000-0"]), 0),
    ("XREAD room stream, 1 entry", room_stream(1), 1),
    ("XREAD inbox, 1 entry", inbox(1), 1),
    ("XREAD inbox, 100 entries", inbox(100), 100),
    ("XREAD room stream, 1000 entries", room_stream(1000), 1000),
    ("XREAD room stream, 1 entry of 64 KiB", room_stream(1, b"x" * 65536), 1),
]


def ours(pieces: list[bytes]) -> list[Any]:
    parser = _Parser()
    out: list[Any] = []
    for piece in pieces:
        parser.feed(piece)
        out += parser.replies()
    return out


def theirs(pieces: list[bytes]) -> list[Any]:
    # Imported by name: it is no dependency of the project, only measured.
    hiredis = importlib.import_module("hiredis")
    reader = hiredis.Reader(replyError=RedisError, notEnoughData=NotImplemented)
    out: list[Any] = []
    for piece in pieces:
        reader.feed(piece)
        while (reply := reader.gets()) is not NotImplemented:
            out.append(reply)
    return out


def plain(value: Any) -> Any:
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value.encode() if isinstance(value, str) else value


def timed(parse: Callable[[list[bytes]], list[Any]], pieces: list[bytes], rounds: int) -> float:
    """Median seconds for one parse of `pieces`."""
    total = sum(map(len, pieces))
    repeat = max(1, 2_000_000 // total)
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(repeat):
            parse(pieces)
        samples.append((time.process_time() - started) / repeat)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    try:
        importlib.import_module("hiredis")
        have_hiredis = True
    except ImportError:
        have_hiredis = False
        print("(hiredis is not installed: only this project's parser is measured)")
    print(f"{'reply':40} {'pieces':>6} {'ours µs':>10} {'hiredis µs':>10} {'ratio':>6} per msg")
    for name, data, messages in SHAPES:
        for label, pieces in (
            ("whole", [data]),
            ("16K", [data[i : i + 16384] for i in range(0, len(data), 16384)]),
        ):
            if label == "16K" and len(data) <= 16384:
                continue
            if have_hiredis:
                # hiredis gives status replies as bytes, this parser as str.
                assert plain(ours(pieces)) == plain(theirs(pieces)), name
            mine = timed(ours, pieces, rounds) * 1e6
            other = timed(theirs, pieces, rounds) * 1e6 if have_hiredis else float("nan")
            per = (
                f"{mine / messages:.2f} / {other / messages:.2f}"
                if messages and have_hiredis
                else ""
            )
            print(f"{name:40} {label:>6} {mine:10.2f} {other:10.2f} {mine / other:6.1f} {per}")
    # For scale: what the owner does with each relayed message besides
    # reading it (parse it, encode it for the receiver, encode the XADD).
    started = time.process_time()
    for _ in range(20000):
        payload = Message.from_json(MESSAGE, from_=PEER.decode()).to_bytes()
        encode(("XADD", "rtcsignal:inbox:n1", "MAXLEN", "~", 10000, "*", "data", payload))
    rest = (time.process_time() - started) / 20000 * 1e6
    print(f"for scale: from_json + to_bytes + encode(XADD) of one message: {rest:.2f} µs")


if __name__ == "__main__":
    main()
