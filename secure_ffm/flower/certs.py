"""Certificates for a test federation: a CA and a SuperLink certificate signed by it (Python ``cryptography``).

``secure-ffm deploy`` makes them in its temporary folder for the loopback federation; ``secure-ffm certs DIR`` writes
them for a federation of real machines (docs/deployment.md). The SuperLink serves ``server.pem`` with ``server.key``;
every SuperNode and the ``flwr`` CLI verify it against ``ca.pem`` (``--root-certificates``). The CA's key stays with
whoever runs this; a node never needs it.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_ffm.run.checkpoint import write_private_bytes

__all__ = ["FederationCertificates", "make_certificates"]


@dataclass(frozen=True)
class FederationCertificates:
    """Paths of the PEM files :func:`make_certificates` wrote."""

    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secure-ffm test federation"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_private_bytes(
        path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def make_certificates(directory: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 30) -> FederationCertificates:
    """A fresh CA and a SuperLink certificate for ``hosts`` (IP addresses or DNS names), valid ``days`` days."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("secure-ffm test CA"))
        .issuer_name(_name("secure-ffm test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    paths = FederationCertificates(directory / "ca.pem", directory / "ca.key", directory / "server.pem", directory / "server.key")
    paths.ca_certificate.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(paths.ca_key, ca_key)
    paths.server_certificate.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(paths.server_key, server_key)
    return paths
