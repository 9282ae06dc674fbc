# -*- test-case-name: tests.transport.test_tls -*-
"""
TLS with mutual authentication on the link: both daemons take a
certificate, its key and the CA that signs their peers (PEM files, as CRIU's
page server takes them). The cache accepts only proxies whose certificate
that CA signed; the proxy accepts only a cache whose certificate that CA
signed for the host it dialled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory

if TYPE_CHECKING:
    from twisted.internet.ssl import Certificate, PrivateCertificate

# TLS is an optional extra (pip install 'imgrelay[tls]'): with pyOpenSSL
# installed, every daemon loads OpenSSL (twisted.internet.endpoints imports
# it), about 14 MB more resident memory.


@attrs.frozen
class TLSFiles:
    """
    The PEM files of one daemon.

    @ivar cert: Its certificate.
    @ivar key: Its private key.
    @ivar ca: The certificate of the authority that signs its peers.
    """

    cert: str
    key: str
    ca: str

    @classmethod
    def given(cls, cert: Optional[str], key: Optional[str], ca: Optional[str]) -> Optional[TLSFiles]:
        """
        @return: The files of a command's C{--tls-cert}, C{--tls-key} and
            C{--tls-ca}, or None where none was given.
        @raise ValueError: If only some were.
        """
        files = (cert, key, ca)
        if not any(files):
            return None
        if not all(files):
            raise ValueError("TLS needs all of --tls-cert, --tls-key and --tls-ca")
        return cls(*files)  # type: ignore[arg-type]


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path!r}: {e.strerror}") from None


def load(files: TLSFiles) -> tuple[PrivateCertificate, Certificate]:
    """
    Read and check the files.

    @return: This daemon's certificate with its key, and the peers' CA.
    @raise ValueError: Naming the file that is missing or not valid PEM, or
        saying TLS support is not installed.
    """
    try:
        from twisted.internet.ssl import Certificate, PrivateCertificate
    except ImportError:  # pragma: no cover (the test environment has it)
        raise ValueError("TLS needs pyOpenSSL: pip install 'imgrelay[tls]'") from None

    cert, key, ca = _read(files.cert, "certificate"), _read(files.key, "key"), _read(files.ca, "CA certificate")
    try:
        own = PrivateCertificate.loadPEM(cert + b"\n" + key)
    except Exception as e:
        raise ValueError(f"{files.cert!r} and {files.key!r} are not a PEM certificate and its key: {e}") from None
    try:
        authority = Certificate.loadPEM(ca)
    except Exception as e:
        raise ValueError(f"{files.ca!r} is not a PEM certificate: {e}") from None
    return own, authority


def serverService(reactor: Any, description: str, factory: Factory, files: TLSFiles) -> StreamServerEndpointService:
    """
    Listen on C{description} with TLS that requires a client certificate
    signed by the CA.

    @return: A service that fails twistd's start-up when it cannot listen.
    """
    from twisted.protocols.tls import TLSMemoryBIOFactory

    own, authority = load(files)
    options = own.options(authority)
    service = StreamServerEndpointService(
        serverFromString(reactor, description), TLSMemoryBIOFactory(options, False, factory)
    )
    service._raiseSynchronously = True
    return service


def clientEndpoint(endpoint: IStreamClientEndpoint, hostname: str, files: TLSFiles) -> IStreamClientEndpoint:
    """
    Wrap C{endpoint} in TLS that presents this daemon's certificate and
    accepts only a server certified for C{hostname} by the CA.
    """
    from twisted.internet.ssl import optionsForClientTLS

    own, authority = load(files)
    options = optionsForClientTLS(hostname, trustRoot=authority, clientCertificate=own)
    return wrapClientTLS(options, endpoint)


def hostOf(description: str) -> Optional[str]:
    """
    The host a C{tcp:} client endpoint string dials: C{tcp:host=H:port=P}
    or C{tcp:H:P}.

    @return: The host, or None for another form.
    """
    parts = description.split(":")
    if len(parts) < 2 or parts[0] != "tcp":
        return None
    named = [p[len("host=") :] for p in parts[1:] if p.startswith("host=")]
    if named:
        return named[0]
    if "=" not in parts[1]:
        return parts[1]
    return None
