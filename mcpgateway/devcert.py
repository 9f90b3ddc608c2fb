"""
Make a self-signed development certificate:
C{python -m mcpgateway.devcert [certs/server.pem] [--host NAME ...]}.

Never for production: use a certificate from your CA.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["main", "make_certificate"]


def make_certificate(hosts: list[str], days: int = 365) -> bytes:
    """
    @param hosts: DNS names and IP addresses the certificate is for.
    @param days: Validity.
    @return: PEM of the certificate followed by its private key.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def main(argv: list[str] | None = None) -> None:
    """
    Write the development certificate (mode 0600).

    @param argv: Arguments without the program name.
    """
    parser = argparse.ArgumentParser(prog="python -m mcpgateway.devcert", description=__doc__)
    parser.add_argument("path", nargs="?", default="certs/server.pem")
    parser.add_argument("--host", action="append", help="DNS name or IP (repeatable; default localhost, 127.0.0.1)")
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    pem = make_certificate(args.host or ["localhost", "127.0.0.1", "::1"], args.days)
    os.makedirs(os.path.dirname(args.path) or ".", exist_ok=True)
    descriptor = os.open(args.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    print(f"wrote a self-signed development certificate to {args.path}")


if __name__ == "__main__":
    main()
