"""
Native TLS: one PEM file holding the certificate, its key and any chain
certificates after the leaf; TLS 1.2 at least; HTTP/1.1 only (ALPN), so
twisted.web never turns on HTTP/2 because the C{h2} package happens to be
installed.
"""

from __future__ import annotations

import re

from OpenSSL import SSL, crypto
from twisted.internet.ssl import CertificateOptions, TLSVersion

__all__ = ["TLSError", "load_tls"]

_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class TLSError(Exception):
    """
    The PEM file cannot be used; the message says why.
    """


def load_tls(path: str) -> CertificateOptions:
    """
    Read C{path} and build the server's TLS options.

    @param path: The PEM file (leaf certificate, private key, chain).
    @return: Options for L{twisted.internet.endpoints.SSL4ServerEndpoint}.
    @raise TLSError: If the file is missing, unreadable, or holds no
        matching certificate and key.
    """
    try:
        with open(path, "rb") as handle:
            pem = handle.read()
    except OSError as error:
        raise TLSError(f"{path}: cannot read the TLS certificate: {error.strerror}") from None
    blocks = _CERTIFICATE.findall(pem)
    if not blocks:
        raise TLSError(f"{path}: no certificate found (expected PEM: certificate, key, chain)")
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, pem)
    except crypto.Error:
        raise TLSError(f"{path}: no readable private key found") from None
    try:
        leaf, *chain = (crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks)
    except crypto.Error:
        raise TLSError(f"{path}: a certificate in the file cannot be read") from None
    options = CertificateOptions(
        privateKey=key.to_cryptography_key(),  # type: ignore[arg-type]
        certificate=leaf.to_cryptography(),  # type: ignore[arg-type]
        extraCertChain=[certificate.to_cryptography() for certificate in chain],  # type: ignore[misc]
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableProtocols=[b"http/1.1"],
    )
    try:
        options.getContext().check_privatekey()
    except SSL.Error:
        raise TLSError(f"{path}: the private key does not fit the certificate") from None
    return options
