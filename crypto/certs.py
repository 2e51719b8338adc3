"""X.509 certificates that bind a TLS peer link to a validator's Ed25519 key.

A validator's link certificate holds its own validator public key and is signed with its own
validator private key; nothing else vouches for it (no CA, no hostnames: the genesis, which
lists the validator keys, is the only trust root).

OpenSSL only completes a mutually authenticated handshake when it can verify the other side's
certificate against a trust store, and Python's ``ssl`` has no verification callback. So each
side also builds, for every validator it accepts, a **trust anchor**: a CA certificate whose
subject is :func:`anchor_name` of that validator and whose public key is that validator's key.
A link certificate is issued by that name (subject and issuer differ, the signing key is the
validator's own), so OpenSSL accepts it exactly when its signature verifies under the expected
validator key. The anchor's own signature is never checked by OpenSSL (trust anchors are taken
as given), so we sign it with the local key only because X.509 needs some signature. After the
handshake the peer's certificate is read back and its key compared with the expected key
(:func:`certificate_public_key`): that comparison, not the certificate chain, is what decides.

Everything here is deterministic in the key: the same key always gives the same certificate.
"""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

# Far enough apart that no clock skew or long-lived testnet ever trips over validity dates.
_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
_ANCHOR_ORG = "phalanx validator"
_LINK_ORG = "phalanx peer link"


class CertificateError(Exception):
    """A certificate is not one a validator could have made."""


def _name(org: str, public_key_hex: str) -> x509.Name:
    # A common name is at most 64 characters: the key's 64 hex characters are split in two.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, public_key_hex[:32]),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, public_key_hex[32:]),
        ]
    )


def anchor_name(public_key_hex: str) -> x509.Name:
    return _name(_ANCHOR_ORG, public_key_hex)


def _serial(public_key_hex: str, salt: int) -> int:
    # Positive, at most 20 bytes (RFC 5280), distinct for anchor and link certificate.
    return (int(public_key_hex[:30], 16) << 4) | salt or 1


def _raw(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def link_certificate(seed: bytes) -> tuple[bytes, bytes]:
    """The PEM certificate and PEM (PKCS#8) private key a validator presents on its links."""
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public_hex = _raw(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(_LINK_ORG, public_hex))
        .issuer_name(anchor_name(public_hex))
        .public_key(key.public_key())
        .serial_number(_serial(public_hex, 1))
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, None)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def trust_anchor(public_key_hex: str, local_seed: bytes) -> bytes:
    """The PEM trust anchor that makes OpenSSL accept the link certificate of
    ``public_key_hex`` (see the module notes; ``local_seed`` only fills the signature field)."""
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
    cert = (
        x509.CertificateBuilder()
        .subject_name(anchor_name(public_key_hex))
        .issuer_name(anchor_name(public_key_hex))
        .public_key(public)
        .serial_number(_serial(public_key_hex, 2))
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(Ed25519PrivateKey.from_private_bytes(local_seed), None)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def certificate_public_key(der: bytes) -> str:
    """The Ed25519 public key (hex) a DER certificate holds; :class:`CertificateError` if it is
    not an Ed25519 certificate."""
    try:
        cert = x509.load_der_x509_certificate(der)
        public = cert.public_key()
    except ValueError as exc:
        raise CertificateError(f"unreadable certificate: {exc}") from exc
    if not isinstance(public, Ed25519PublicKey):
        raise CertificateError(f"the certificate key is {type(public).__name__}, not Ed25519")
    return _raw(public)


def self_signed_server_certificate(seed: bytes, host: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for the optional HTTPS API (clients pin it with ``--cacert``).
    It names ``host`` (an IP address or DNS name) so ordinary HTTPS clients can check it."""
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public_hex = _raw(key.public_key())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial(public_hex, 3))
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .sign(key, None)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
