"""
Tests for L{imgrelay.config}: each daemon's options, their defaults and
their cross-checks, in one frozen object.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import attrs
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

import imgrelay
from imgrelay.cache.service import CacheService
from imgrelay.config import CacheConfig, ProxyConfig
from imgrelay.core.names import defaultSessionName
from imgrelay.proxy.service import ProxyService
from imgrelay.proxy.stream import MIN_WINDOW
from imgrelay.transport.localsock import UnsafeDirectory, localEndpoint
from imgrelay.transport.tls import TLSFiles


class ProxyConfigTests(SynchronousTestCase):
    """
    L{ProxyConfig} fills its defaults and refuses inconsistent options.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, self.dir)

    def test_defaults(self) -> None:
        """
        The session name comes from the images directory, the TLS host name
        from the endpoint string, CRIU's socket is the protocol's in the
        images directory, and the config is frozen.
        """
        config = ProxyConfig(imagesDir=self.dir, connect="tcp:host=dest:port=7070")
        self.assertEqual(config.sessionName, defaultSessionName(self.dir))
        self.assertEqual(config.tlsHostname, "dest")
        self.assertEqual(config.localDescription(), localEndpoint(self.dir, "streamer-capture.sock", 0o600))
        remote = attrs.evolve(config, protocol="remote")
        self.assertEqual(remote.localDescription(), localEndpoint(self.dir, "img-proxy.sock", 0o600))
        self.assertEqual((config.maxSessions, attrs.evolve(config, oneshot=True).maxSessions), (None, 1))
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, config, "window", 1)

    def test_refused(self) -> None:
        """
        An unknown protocol or link, a window under the smallest, a timeout
        that is not positive, no directory and no local socket, TLS with no
        host name: each is a C{ValueError} naming what is wrong.
        """
        base = dict(imagesDir=self.dir, connect="tcp:host=dest:port=1")
        for bad, text in (
            (dict(protocol="ftp"), "unknown protocol"),
            (dict(link="x"), "unknown link format"),
            (dict(window=MIN_WINDOW - 1), "under"),
            (dict(reconnectTimeout=0), "--reconnect-timeout"),
            (dict(idleTimeout=-1), "--idle-timeout"),
            (dict(imagesDir=None), "--images-dir"),
            (dict(connect="unix:/x", tls=TLSFiles("c", "k", "a")), "--tls-hostname"),
            (dict(compress="gzip"), "unknown compression"),
            (dict(link="criu", compress="zstd"), "--compress zstd needs imgrelay's link"),
            (dict(link="criu", compress="lz4"), "--link criu sends images raw"),
        ):
            error = self.assertRaises(ValueError, ProxyConfig, **{**base, **bad})  # type: ignore[arg-type]
            self.assertIn(text, str(error))
        # The default, auto, is no compression on CRIU's link.
        self.assertEqual(ProxyConfig(**{**base, "link": "criu"}).compress, "auto")  # type: ignore[arg-type]

    def test_unsafeDirectory(self) -> None:
        """
        An images directory others can write to is refused, naming the
        option; with a local endpoint, the directory holds no socket and is
        not checked.
        """
        os.chmod(self.dir, 0o777)
        error = self.assertRaises(UnsafeDirectory, ProxyConfig, imagesDir=self.dir, connect="tcp:host=a:port=1")
        self.assertIn("--images-dir", str(error))
        ProxyConfig(imagesDir=self.dir, connect="tcp:host=a:port=1", local="unix:/tmp/x.sock")


class CacheConfigTests(SynchronousTestCase):
    """
    L{CacheConfig} fills its defaults and refuses inconsistent options.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, self.dir)

    def test_sockets(self) -> None:
        """
        With an images directory, CRIU's socket and the fetch socket are in
        it; with C{local}, CRIU's is there and there is no other; with a
        sessions root, each session has its own.
        """
        config = CacheConfig(imagesDir=self.dir, listen="tcp:0")
        self.assertEqual(config.localDescription(), localEndpoint(self.dir, "streamer-serve.sock", 0o600))
        self.assertEqual(config.socketsDir, self.dir)
        local = CacheConfig(imagesDir=self.dir, listen="tcp:0", local="unix:/tmp/x.sock")
        self.assertEqual((local.localDescription(), local.socketsDir), ("unix:/tmp/x.sock", None))
        root = CacheConfig(sessionsRoot=self.dir, listen="tcp:0")
        self.assertEqual((root.localDescription(), root.socketsDir), (None, None))

    def test_refused(self) -> None:
        """
        A sessions root with an images directory, a local endpoint,
        C{oneshot} or the CRIU-format link; neither directory; a negative
        retention; a session count that is not positive: each is a
        C{ValueError} naming the option.
        """
        for bad, text in (
            (dict(sessionsRoot=self.dir, imagesDir=self.dir), "exclude each other"),
            (dict(sessionsRoot=self.dir, local="unix:/tmp/x"), "exclude each other"),
            (dict(sessionsRoot=self.dir, oneshot=True), "--oneshot"),
            (dict(sessionsRoot=self.dir, link="criu"), "--link criu"),
            (dict(), "--sessions-root"),
            (dict(imagesDir=self.dir, retain=-1), "--retain"),
            (dict(imagesDir=self.dir, maxSessions=0), "--max-sessions"),
            (dict(imagesDir=self.dir, maxMemory=0), "--max-memory"),
        ):
            error = self.assertRaises(ValueError, CacheConfig, listen="tcp:0", **bad)  # type: ignore[arg-type]
            self.assertIn(text, str(error))


class ServiceFromConfigTests(SynchronousTestCase):
    """
    The services read everything from the config they are given.
    """

    def test_services(self) -> None:
        """
        Each service keeps its config and takes what it holds.
        """
        d = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, d)
        proxyConfig = ProxyConfig(imagesDir=d, connect="tcp:host=a:port=1", sessionName="s", oneshot=True)
        proxy = ProxyService(proxyConfig, MemoryReactorClock())
        self.assertIs(proxy.config, proxyConfig)
        self.assertEqual((proxy.sessionName, proxy.maxSessions), ("s", 1))
        cacheConfig = CacheConfig(imagesDir=d, listen="tcp:0", maxMemory=1 << 20)
        cache = CacheService(cacheConfig, MemoryReactorClock())
        self.assertIs(cache.config, cacheConfig)
        self.assertEqual(cache.bound.limit, 1 << 20)


class DeprecatedTests(SynchronousTestCase):
    """
    The 0.1 functions still build the services, with a warning.
    """

    def test_functions(self) -> None:
        """
        C{imgrelay.proxyService} and C{imgrelay.cacheService} warn, naming
        what replaces them, and pass their options to the config.
        """
        d = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, d)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            proxy = imgrelay.proxyService(d, "tcp:host=a:port=1", "s", reactor=MemoryReactorClock(), window=8 << 20)
            cache = imgrelay.cacheService(d, "tcp:0", reactor=MemoryReactorClock(), retain=5.0)
        self.assertEqual([w.category for w in caught], [DeprecationWarning, DeprecationWarning])
        self.assertIn("ProxyService(ProxyConfig(", str(caught[0].message))
        self.assertIn("CacheService(CacheConfig(", str(caught[1].message))
        self.assertEqual((proxy.config.sessionName, proxy.config.window), ("s", 8 << 20))
        self.assertEqual((cache.config.imagesDir, cache.config.retain), (d, 5.0))
