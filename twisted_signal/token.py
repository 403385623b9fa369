"""
Mint a token for testing and for small deployments:

    python -m twisted_signal.token --secret-file F --room R --sub alice --ttl 3600
    python -m twisted_signal.token --private-key-file key.pem --room '*' --sub bot

The token is printed on standard output.  HS256 with a secret, or RS256/ES256
with an RSA/EC private key in PEM form.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .rooms import is_room_name

__all__ = ["main", "mint"]


def mint(
    key: Any,
    algorithm: str,
    room: str,
    *,
    sub: str | None = None,
    ttl: int = 3600,
    now: float | None = None,
) -> str:
    """
    A signed token for `room` (or ``"*"``), valid from now for `ttl` seconds.
    """
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"room": room, "iat": issued, "nbf": issued, "exp": issued + ttl}
    if sub is not None:
        claims["sub"] = sub
    return jwt.encode(claims, key, algorithm=algorithm)


def _read_secret(path: str) -> str:
    secret = Path(path).read_text().strip()
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m twisted_signal.token", description="Mint a twisted-signal JWT."
    )
    key_group = parser.add_mutually_exclusive_group(required=True)
    key_group.add_argument("--secret-file", help="file holding the HS256 secret")
    key_group.add_argument("--secret", help="the HS256 secret itself (prefer --secret-file)")
    key_group.add_argument("--private-key-file", help="RSA (RS256) or EC (ES256) private key, PEM")
    parser.add_argument("--room", required=True, help='the room, or "*" for any room')
    parser.add_argument("--sub", help="the identity of the holder")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds of validity (default 3600)")
    args = parser.parse_args(argv)
    if args.room != "*" and not is_room_name(args.room):
        parser.error(f"--room {args.room!r} is not a room name")
    if args.ttl < 1:
        parser.error("--ttl must be at least 1")
    key: Any
    try:
        if args.private_key_file:
            key = load_pem_private_key(Path(args.private_key_file).read_bytes(), password=None)
            if isinstance(key, rsa.RSAPrivateKey):
                algorithm = "RS256"
            elif isinstance(key, ec.EllipticCurvePrivateKey):
                algorithm = "ES256"
            else:
                parser.error("the private key is neither RSA nor EC")
        else:
            key = args.secret if args.secret else _read_secret(args.secret_file)
            algorithm = "HS256"
    except (OSError, ValueError, TypeError) as e:
        parser.error(str(e))
    print(mint(key, algorithm, args.room, sub=args.sub, ttl=args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
