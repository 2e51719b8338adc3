"""TLS 1.3 contexts for peer links, mutually authenticated by the validator keys themselves.

Each validator presents :func:`crypto.certs.link_certificate` of its own key. The listening side
trusts exactly the other validators of the genesis; a dialing side trusts exactly the one
validator it dials. After the handshake :func:`peer_public_key` reads the certificate the peer
actually proved (TLS 1.3 CertificateVerify signs the handshake transcript with that key) and the
caller compares it with the key it expects. No CA and no hostname take part.

Python's ``ssl`` loads certificates and keys only from files: the material is written to a
private temporary directory (mode 0700) and deleted as soon as the contexts have loaded it.
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

from crypto.certs import CertificateError, certificate_public_key, link_certificate, trust_anchor


class TlsSetupError(Exception):
    """This Python/OpenSSL cannot make Ed25519 TLS 1.3 contexts."""


def _base_context(purpose: int, cert_pem: bytes, key_pem: bytes, anchors: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # no hostnames: the key is the identity
    context.verify_mode = ssl.CERT_REQUIRED  # both sides present and prove a certificate
    context.options |= ssl.OP_NO_TICKET  # no session resumption: every link proves its key
    with tempfile.TemporaryDirectory(prefix="phalanx-tls-") as tmp:
        cert_file, key_file = Path(tmp, "link.crt"), Path(tmp, "link.key")
        key_file.touch(mode=0o600)
        key_file.write_bytes(key_pem)
        cert_file.write_bytes(cert_pem)
        try:
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            raise TlsSetupError(
                f"OpenSSL {ssl.OPENSSL_VERSION} refused an Ed25519 certificate ({exc}); "
                "peer links need OpenSSL 1.1.1 or later"
            ) from exc
    context.load_verify_locations(cadata=anchors.decode("ascii"))
    return context


class LinkTls:
    """The contexts of one validator: one server context, one client context per peer."""

    def __init__(self, seed: bytes, me: str, others: Iterable[str]) -> None:
        self.me = me
        self._cert_pem, self._key_pem = link_certificate(seed)
        self._anchors = {key: trust_anchor(key, seed) for key in others if key != me}
        self.server = _base_context(
            ssl.PROTOCOL_TLS_SERVER,
            self._cert_pem,
            self._key_pem,
            b"".join(self._anchors.values()),
        )
        self._clients: dict[str, ssl.SSLContext] = {}

    def client(self, peer: str) -> ssl.SSLContext:
        """The context for dialing ``peer``: it trusts that validator's key and no other."""
        context = self._clients.get(peer)
        if context is None:
            context = _base_context(
                ssl.PROTOCOL_TLS_CLIENT, self._cert_pem, self._key_pem, self._anchors[peer]
            )
            self._clients[peer] = context
        return context


def peer_public_key(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The validator key the other side of an established TLS link proved, or None."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        return certificate_public_key(der)
    except CertificateError:
        return None
