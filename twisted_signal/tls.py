"""
TLS as Mozilla's server-side profiles want it, for the ``ssl:`` endpoints
users write (``ssl:8443:privateKey=key.pem:certKey=cert.pem``).

Twisted's defaults accept CBC and CCM suites and the X448 and secp521r1
curves, which the "intermediate" profile rejects.  `harden_endpoint` keeps
everything the endpoint string said (certificate, chain, ``dhParameters``)
and narrows the protocol versions, the TLS 1.2 suites and the key exchange
groups to the chosen profile's; TLS 1.3 suites stay OpenSSL's, which are
the profiles' own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from twisted.internet.endpoints import SSL4ServerEndpoint

__all__ = ["PROFILES", "TlsProfile", "harden_context", "harden_context_factory", "harden_endpoint"]


@dataclass(frozen=True)
class TlsProfile:
    """
    One of Mozilla's server-side TLS profiles (version 5.7).
    """

    name: str
    minimum_version: int
    """An OpenSSL protocol version constant: nothing older is accepted."""
    ciphers: tuple[str, ...]
    """The TLS 1.2 suites, by their OpenSSL names (none: no TLS 1.2)."""
    groups: tuple[str, ...]
    """The key exchange groups (curves) offered, by their OpenSSL names."""


_GROUPS = ("X25519", "prime256v1", "secp384r1")

PROFILES: dict[str, TlsProfile] = {
    "intermediate": TlsProfile(
        name="intermediate",
        minimum_version=SSL.TLS1_2_VERSION,
        ciphers=(
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-RSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            "ECDHE-RSA-CHACHA20-POLY1305",
            "DHE-RSA-AES128-GCM-SHA256",
            "DHE-RSA-AES256-GCM-SHA384",
            "DHE-RSA-CHACHA20-POLY1305",
        ),
        groups=_GROUPS,
    ),
    "modern": TlsProfile(
        name="modern", minimum_version=SSL.TLS1_3_VERSION, ciphers=(), groups=_GROUPS
    ),
}
"""The profiles ``--tls-profile`` chooses from, by name."""


def _profile(profile: str | TlsProfile) -> TlsProfile:
    if isinstance(profile, TlsProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        names = " or ".join(PROFILES)
        raise ValueError(f"unknown TLS profile {profile!r} (expected {names})") from None


def harden_context(context: SSL.Context, profile: str | TlsProfile = "intermediate") -> None:
    """
    Restrict an OpenSSL server `context` to `profile` (a name of `PROFILES`
    or a `TlsProfile`), in place.  Client-initiated renegotiation is refused
    too (a cheap denial of service otherwise).
    """
    chosen = _profile(profile)
    context.set_min_proto_version(chosen.minimum_version)
    if chosen.ciphers:
        context.set_cipher_list(":".join(chosen.ciphers).encode("ascii"))
    context.set_options(SSL.OP_NO_RENEGOTIATION)
    _set_groups(context, chosen.groups)


def _set_groups(context: SSL.Context, groups: tuple[str, ...]) -> None:
    names = ":".join(groups).encode("ascii")
    set_groups = getattr(context, "set_groups", None)
    if set_groups is not None:  # pyOpenSSL releases that have it
        set_groups(names)
        return
    # Older pyOpenSSL has only set_tmp_ecdh (one curve); its bindings do
    # have OpenSSL's list setter.
    from OpenSSL._util import lib

    if not lib.SSL_CTX_set1_curves_list(context._context, names):
        raise ValueError(f"OpenSSL does not know the groups {names.decode()}")


def harden_context_factory(factory: Any, profile: str | TlsProfile = "intermediate") -> Any:
    """
    Restrict a server context factory (a `CertificateOptions`, as ``ssl:``
    endpoint strings make, or any factory whose ``getContext()`` returns
    one cached context) to `profile`, and return it.
    """
    context = factory.getContext()
    harden_context(context, profile)
    if factory.getContext() is not context:
        raise TypeError(f"{factory!r} makes a new context each time: harden its contexts instead")
    return factory


def harden_endpoint(endpoint: Any, profile: str | TlsProfile = "intermediate") -> Any:
    """
    `endpoint` (from ``serverFromString``), with its TLS restricted to
    `profile` if it is an ``ssl:`` endpoint; other endpoints come back as
    they are.
    """
    if isinstance(endpoint, SSL4ServerEndpoint):
        harden_context_factory(endpoint._sslContextFactory, profile)
    return endpoint
