"""
A development certificate, so the room page can be tried over HTTPS
(browsers only give a camera to secure pages)::

    python -m twisted_signal.devcert [--dir certs] [--host NAME ...]

writes ``key.pem`` (an EC P-256 private key, mode 0600) and ``cert.pem`` (a
self-signed certificate for localhost, 127.0.0.1, ::1, this machine's host
name and every ``--host``) into the folder, and prints the ``twistd``
command that serves them.  Browsers warn about it: it is for development
only, never for production.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import socket
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_HOSTS", "endpoint_string", "main", "write_dev_certificate"]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
"""Names and addresses every development certificate covers."""

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"


def write_dev_certificate(
    folder: str | os.PathLike[str],
    hosts: Iterable[str] = (),
    *,
    days: int = 90,
    now: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    """
    Write a new private key and a self-signed certificate for
    `DEFAULT_HOSTS`, this machine's host name and `hosts` into `folder`
    (created if needed), replacing any there.

    @return: the paths of the key and of the certificate.
    """
    directory = Path(folder)
    directory.mkdir(parents=True, exist_ok=True)
    names = _unique([*DEFAULT_HOSTS, socket.gethostname(), *hosts])
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "twisted-signal development"),
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path = directory / KEY_FILE
    cert_path = directory / CERT_FILE
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, key_pem)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def endpoint_string(
    key_path: str | os.PathLike[str], cert_path: str | os.PathLike[str], *, port: int = 8443
) -> str:
    """
    The Twisted ``ssl:`` server endpoint string that serves this key and
    certificate on `port`.
    """
    key = _escape(os.fspath(key_path))
    cert = _escape(os.fspath(cert_path))
    return f"ssl:{port}:privateKey={key}:certKey={cert}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m twisted_signal.devcert",
        description=(
            "Write a development private key (key.pem) and a self-signed certificate "
            "(cert.pem) for localhost, 127.0.0.1, ::1 and this machine's host name."
        ),
    )
    parser.add_argument(
        "--dir", default="certs", help="the folder to write into (default: %(default)s)"
    )
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name or IP address to cover; repeatable",
    )
    parser.add_argument(
        "--days", type=int, default=90, help="validity in days (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8443,
        help="the port in the printed command (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")
    for host in args.host:
        if not _valid_host(host):
            parser.error(f"--host {host!r} is neither a host name nor an IP address")
    key_path, cert_path = write_dev_certificate(args.dir, args.host, days=args.days)
    print(f"wrote {key_path} and {cert_path} (self-signed, for development only)")
    print("serve them with:")
    print(
        f"  twistd -n rtcsignal --endpoint {endpoint_string(key_path, cert_path, port=args.port)}"
    )
    print(f"then open https://localhost:{args.port}/ and accept the browser's warning.")
    return 0


def _unique(names: Iterable[str]) -> list[str]:
    seen: dict[str, str] = {}
    for name in names:
        stripped = name.strip()
        if stripped:
            seen.setdefault(stripped.lower(), stripped)
    return list(seen.values())


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _valid_host(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        labels = name.rstrip(".").split(".")
        return 0 < len(name) <= 253 and all(
            0 < len(label) <= 63 and all(c.isalnum() or c in "-_*" for c in label)
            for label in labels
        )
    return True


def _write_private(path: Path, data: bytes) -> None:
    """
    Write `data` readable by its owner only, from the first byte on.
    """
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _escape(value: str) -> str:
    """
    Escape the characters that have a meaning in an endpoint string.
    """
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


if __name__ == "__main__":
    sys.exit(main())
