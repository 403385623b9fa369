"""
Token authentication (SPEC 5.1): JWTs signed with a shared secret (HS256) or
a private key whose public half the server holds (RS256, ES256).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .errors import Unauthorized

__all__ = ["ANY_ROOM", "TokenVerifier", "token_from_request"]

ANY_ROOM = "*"


@dataclass(frozen=True)
class TokenVerifier:
    """
    Checks a token for a room and gives its claims.  Its `repr` never shows
    the key.
    """

    key: Any = field(repr=False)
    algorithms: tuple[str, ...]
    leeway: float = 30.0
    """Seconds of clock skew tolerated on ``exp`` and ``nbf``."""

    @classmethod
    def from_secret(cls, secret: str | bytes, leeway: float = 30.0) -> TokenVerifier:
        if not secret:
            raise ValueError("the JWT secret is empty")
        return cls(secret, ("HS256",), leeway)

    @classmethod
    def from_public_key(cls, pem: bytes, leeway: float = 30.0) -> TokenVerifier:
        """
        @raise ValueError: `pem` is not an RSA or EC public key in PEM form.
        """
        key = load_pem_public_key(pem)
        if isinstance(key, rsa.RSAPublicKey):
            return cls(key, ("RS256",), leeway)
        if isinstance(key, ec.EllipticCurvePublicKey):
            return cls(key, ("ES256",), leeway)
        raise ValueError("the public key is neither RSA nor EC")

    def verify(self, token: str | None, room: str) -> dict[str, Any]:
        """
        The token's claims.

        @raise Unauthorized: the token is missing, malformed, badly signed,
            expired, not yet valid, or not for `room`.  The message says
            which, never what the token was.
        """
        if not token:
            raise Unauthorized("no token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                leeway=self.leeway,
                options={"require": ["room"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not yet valid") from None
        except jwt.MissingRequiredClaimError:
            raise Unauthorized("token has no room claim") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid token") from None
        if claims.get("room") not in (room, ANY_ROOM):
            raise Unauthorized("token is for another room")
        return claims


def token_from_request(params: dict[str, list[str]], headers: dict[str, str]) -> str | None:
    """
    The token of a WebSocket upgrade request: the query parameter ``token``,
    else the cookie ``token``.
    """
    values = params.get("token")
    if values:
        return values[0]
    cookie_header = headers.get("cookie")
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == "token" and value:
            return _unquote_cookie(value)
    return None


def _unquote_cookie(value: str) -> str:
    if value.startswith('"') and value.endswith('"'):
        try:
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(f"token={value}")
            return cookie["token"].value
        except (CookieError, KeyError):
            return value
    return value
