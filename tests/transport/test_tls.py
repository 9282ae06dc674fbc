"""
Tests for TLS with mutual authentication on the link (L{imgrelay.transport.tls}),
with certificates made in the test: a CA, a good proxy, a proxy signed by
another CA, an expired proxy, and a cache certified for the wrong host.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from typing import Any, Optional, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from imgrelay.config import CacheConfig, ProxyConfig
from imgrelay.transport.localsock import CAPTURE_SOCKET, SERVE_SOCKET
from imgrelay.cache.service import CacheService
from imgrelay.proxy.service import ProxyService
from imgrelay.proxy.interfaces import SessionOutcome
from imgrelay.transport.tls import TLSFiles, hostOf, load
from imgrelay.tap import CacheOptions, ProxyOptions
from imgrelay.testing import criu, traces

_NOW = datetime.datetime.now(datetime.timezone.utc)


class Authority:
    """
    A CA that signs certificates into a directory.
    """

    def __init__(self, directory: str, name: str) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(days=1)).not_valid_after(_NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = self._write(name + "-ca.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def issue(self, name: str, hosts: list[str], expired: bool = False, ca: Optional[str] = None) -> TLSFiles:
        """
        @return: The files of a certificate for C{hosts} signed by this CA,
            trusting C{ca} (this CA by default) for its peers.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        end = _NOW - datetime.timedelta(days=1) if expired else _NOW + datetime.timedelta(days=30)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(days=2)).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return TLSFiles(
            self._write(name + ".pem", cert.public_bytes(serialization.Encoding.PEM)),
            self._write(name + ".key", key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
            ca or self.path,
        )


class TLSMigrationTests(TestCase):
    """
    Only a proxy certified by the cache's CA gets through, and only to a
    cache certified for the host the proxy dialled.
    """

    timeout = 60

    def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="imgrelay-tls-")
        self.ca = Authority(self.base, "good")
        self.otherCA = Authority(self.base, "other")
        self.cacheFiles = self.ca.issue("cache", ["127.0.0.1", "localhost"])

    async def migrate(self, proxyFiles: TLSFiles, cacheFiles: Optional[TLSFiles] = None) -> Union[SessionOutcome, Failure]:
        """
        Run a small --stream migration over a TLS link.

        @return: The proxy's outcome.
        """
        dump, restore = tempfile.mkdtemp(dir=self.base), tempfile.mkdtemp(dir=self.base)
        cache = CacheService(
            CacheConfig(listen="tcp:0:interface=127.0.0.1", imagesDir=restore, tls=cacheFiles or self.cacheFiles), reactor
        )
        cache.startService()
        self.addCleanup(cache.stopService)
        address = await cache.linkAddress()
        proxy = ProxyService(
            ProxyConfig(
                imagesDir=dump, connect=f"tcp:host=127.0.0.1:port={address.port}",  # type: ignore[attr-defined]
                sessionName="tls-test", tls=proxyFiles,
            ),
            reactor,
        )
        outcomes: list[Any] = []
        proxy.addSessionObserver(outcomes.append)
        proxy.startService()
        self.addCleanup(proxy.stopService)

        def dumpImages() -> None:
            d = criu.StreamDumper(os.path.join(dump, CAPTURE_SOCKET))
            try:
                d.send("inventory.img", b"inventory")
                d.send("pages-1.img", traces.patternBytes("p", 3 << 20))
            except OSError:
                pass  # a refused session closes the pipes
            d.close()

        await deferToThread(dumpImages)
        for _ in range(3000):
            if outcomes:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.outcomeCache = cache
        self.restoreDir = restore
        return outcomes[0]

    async def test_goodProxy(self) -> None:
        """
        A proxy whose certificate the CA signed completes the migration, and
        the restore reads the images.
        """
        outcome = await self.migrate(self.ca.issue("proxy", ["proxy.example"]))
        self.assertIsInstance(outcome, SessionOutcome)
        r = criu.StreamRestorer(os.path.join(self.restoreDir, SERVE_SOCKET))
        self.assertEqual(await deferToThread(r.fetch, "pages-1.img"), traces.patternBytes("p", 3 << 20))
        r.close()

    async def test_proxyOfAnotherCA(self) -> None:
        """
        A proxy whose certificate another CA signed is refused.
        """
        outcome = await self.migrate(self.otherCA.issue("stranger", ["proxy.example"], ca=self.ca.path))
        self.assertIsInstance(outcome, Failure)

    async def test_expiredProxy(self) -> None:
        """
        A proxy whose certificate expired is refused.
        """
        outcome = await self.migrate(self.ca.issue("old", ["proxy.example"], expired=True))
        self.assertIsInstance(outcome, Failure)

    async def test_cacheForAnotherHost(self) -> None:
        """
        The proxy refuses a cache whose certificate does not name the host
        it dialled, though the CA signed it.
        """
        outcome = await self.migrate(
            self.ca.issue("proxy", ["proxy.example"]), self.ca.issue("elsewhere", ["cache.example"])
        )
        self.assertIsInstance(outcome, Failure)


class TLSOptionsTests(SynchronousTestCase):
    """
    The TLS options are checked when the daemon starts.
    """

    def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="imgrelay-tls-")
        self.files = Authority(self.base, "ca").issue("cache", ["localhost"])

    def test_allThree(self) -> None:
        """
        TLS needs a certificate, its key and a CA together.
        """
        options = CacheOptions()
        error = self.assertRaises(UsageError, options.parseOptions,
                                  ["-D", self.base, "--listen", "tcp:0", "--tls-cert", self.files.cert])
        self.assertIn("all three", str(error))

    def test_goodFiles(self) -> None:
        """
        Readable PEM files are accepted and passed on as L{TLSFiles}.
        """
        options = CacheOptions()
        options.parseOptions(["-D", self.base, "--listen", "tcp:0", "--tls-cert", self.files.cert,
                              "--tls-key", self.files.key, "--tls-ca", self.files.ca])
        self.assertEqual(options["tls"], self.files)

    def test_badFiles(self) -> None:
        """
        A missing file or one that is not PEM is named in the error.
        """
        error = self.assertRaises(ValueError, load, TLSFiles(self.files.cert, self.base + "/nope", self.files.ca))
        self.assertIn("nope", str(error))
        error = self.assertRaises(ValueError, load, TLSFiles(self.files.cert, self.files.key, self.files.key))
        self.assertIn("is not a PEM certificate", str(error))

    def test_proxyNeedsHostname(self) -> None:
        """
        A proxy whose --connect names no host needs --tls-hostname.
        """
        options = ProxyOptions()
        args = ["-D", self.base, "--connect", "unix:/tmp/x.sock", "--tls-cert", self.files.cert,
                "--tls-key", self.files.key, "--tls-ca", self.files.ca]
        self.assertRaises(UsageError, options.parseOptions, args)
        ProxyOptions().parseOptions(args + ["--tls-hostname", "localhost"])

    def test_hostOf(self) -> None:
        """
        The host is read from both forms of a tcp client endpoint string.
        """
        self.assertEqual(hostOf("tcp:host=dest:port=7070"), "dest")
        self.assertEqual(hostOf("tcp:dest:7070"), "dest")
        self.assertEqual(hostOf("tcp:port=7070:host=10.0.0.2"), "10.0.0.2")
        self.assertIsNone(hostOf("unix:/tmp/x"))


class GivenTests(SynchronousTestCase):
    """
    L{TLSFiles.given}: a command's three TLS options, all or none.
    """

    def test_allOrNone(self) -> None:
        self.assertIsNone(TLSFiles.given(None, None, None))
        self.assertEqual(TLSFiles.given("c.pem", "k.pem", "ca.pem"), TLSFiles("c.pem", "k.pem", "ca.pem"))

    def test_some(self) -> None:
        for some in (("c.pem", None, None), (None, "k.pem", "ca.pem"), ("c.pem", "k.pem", "")):
            with self.assertRaises(ValueError) as raised:
                TLSFiles.given(*some)
            self.assertEqual(str(raised.exception), "TLS needs all of --tls-cert, --tls-key and --tls-ca")
