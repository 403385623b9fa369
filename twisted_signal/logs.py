"""
Log observers for ``twistd --logger``:

    twistd --logger twisted_signal.logs.json_stdout -n rtcsignal

writes one JSON object per event to standard output (``log_format``,
``log_level``, ``log_namespace``, ``log_time`` and the event's fields, such as
``peer_id``, ``room`` and ``remote``), ready for a log shipper.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver

__all__ = ["json_stderr", "json_stdout"]


def json_stdout() -> ILogObserver:
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


def json_stderr() -> ILogObserver:
    return jsonFileLogObserver(sys.stderr, recordSeparator="")
