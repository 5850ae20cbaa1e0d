"""Lab credentials: a local CA with KME (server) and SAE (client) certificates, and
CurveZMQ key pairs for the bridge.

Certificates use ECDSA P-256; an SAE's identity is its certificate's Common Name (the
SAE ID the KME's policy names). KME certificates carry ``127.0.0.1``, ``::1`` and
``localhost`` as subject alternative names. Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass

import zmq.auth
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertPaths:
    cert: str
    key: str


def _write(path: str, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cvqkd-hil lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_ca(out_dir: str, name: str = "ca", days: int = 365) -> CertPaths:
    """Create a self-signed CA (``<name>.crt``, ``<name>.key``) in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"cvqkd-hil lab CA {name}"))
        .issuer_name(_name(f"cvqkd-hil lab CA {name}"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    paths = CertPaths(os.path.join(out_dir, f"{name}.crt"), os.path.join(out_dir, f"{name}.key"))
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write(paths.key, _key_pem(key), private=True)
    return paths


def issue(
    ca: CertPaths,
    out_dir: str,
    cn: str,
    server: bool,
    hosts: Iterable[str] = ("127.0.0.1", "::1", "localhost"),
    days: int = 365,
) -> CertPaths:
    """Issue a server (KME) or client (SAE, CN = SAE ID) certificate signed by ``ca``."""
    try:
        with open(ca.cert, "rb") as fh:
            ca_cert = x509.load_pem_x509_certificate(fh.read())
        with open(ca.key, "rb") as fh:
            ca_key = serialization.load_pem_private_key(fh.read(), password=None)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"cannot load CA {ca.cert} / {ca.key}: {exc}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    os.makedirs(out_dir, exist_ok=True)
    stem = cn.replace("/", "_")
    paths = CertPaths(os.path.join(out_dir, f"{stem}.crt"), os.path.join(out_dir, f"{stem}.key"))
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write(paths.key, _key_pem(key), private=True)
    return paths


def make_lab_pki(out_dir: str, kmes: Iterable[str], saes: Iterable[str]) -> dict[str, CertPaths]:
    """A CA plus one server certificate per KME and one client certificate per SAE."""
    ca = make_ca(out_dir)
    out = {"ca": ca}
    for k in kmes:
        out[k] = issue(ca, out_dir, k, server=True)
    for s in saes:
        out[s] = issue(ca, out_dir, s, server=False)
    return out


def curve_keypair(out_dir: str, name: str) -> tuple[str, str]:
    """A CurveZMQ key pair as ``zmq.auth`` certificate files: (public, secret) paths."""
    os.makedirs(out_dir, exist_ok=True)
    public, secret = zmq.auth.create_certificates(out_dir, name)
    os.chmod(secret, 0o600)
    return str(public), str(secret)
