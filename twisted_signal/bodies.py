"""
Request bodies: how many bytes each route takes, held in memory.

Twisted's `Request` writes a body over 100 KB (or of unknown length, when
it is chunked) to a temporary file before any resource has seen the request.
The server's site instead asks its resource how much the route takes before
reading a byte of the body (`BodyLimit`), refuses a longer one at once, and
counts a chunked one as it arrives (`BoundedBody`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["BODY_ALLOWANCE", "BodyLimit", "BoundedBody"]

BODY_ALLOWANCE = 1024
"""The bytes of body a request may carry on a route that takes none (a
client may send an empty JSON object, or a form, with a GET or DELETE)."""


@dataclass(frozen=True)
class BodyLimit:
    """
    The most bytes of body a route takes, and the answer to a request that
    carries more: 413, or 401 (with its ``WWW-Authenticate`` challenge) where
    the route needs credentials the request lacks.
    """

    limit: int = BODY_ALLOWANCE
    status: int = 413
    error: str = "Payload Too Large"
    details: str | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def why(self) -> str:
        """The ``details`` of the refusal."""
        return self.details or f"the body is over {self.limit} bytes"


class BoundedBody(BytesIO):
    """
    A request's body in memory, up to `limit` bytes: the write that would
    go past it calls `overflow` instead, and every write after it is dropped.
    """

    def __init__(self, limit: int, overflow: Callable[[], None]) -> None:
        super().__init__()
        self.limit = limit
        self._overflow: Callable[[], None] | None = overflow

    def write(self, data: ReadableBuffer, /) -> int:
        chunk = memoryview(data)
        if self._overflow is None:
            return len(chunk)
        if self.tell() + len(chunk) > self.limit:
            overflow, self._overflow = self._overflow, None
            overflow()
            return len(chunk)
        return super().write(chunk)
