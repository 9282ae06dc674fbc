"""
Tests for L{imgrelay.tap}: the twistd plugins' options and services, and
L{imgrelay.daemon}.
"""

from __future__ import annotations

import os
import tempfile

from twisted.application.service import IService, IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgrelay import daemon as _exit
from imgrelay.cache.service import CacheService
from imgrelay.core.names import checkSessionDirName
from imgrelay.observe.service import Observability
from imgrelay.core.names import defaultSessionName
from imgrelay.proxy.service import ProxyService
from imgrelay.tap import CacheOptions, ProxyOptions, makeCacheService, makeProxyService


class PluginTests(SynchronousTestCase):
    """
    twistd finds both plugins.
    """

    def test_plugins(self) -> None:
        """
        C{imgrelay-proxy} and C{imgrelay-cache} are L{IServiceMaker} plugins
        whose options are the imgrelay ones.
        """
        import twisted.plugins

        makers = {p.tapname: p for p in getPlugins(IServiceMaker, twisted.plugins)}
        self.assertIn("imgrelay-proxy", makers)
        self.assertIn("imgrelay-cache", makers)
        for name in ("imgrelay-proxy", "imgrelay-cache"):
            verifyObject(IServiceMaker, makers[name])
            verifyObject(IPlugin, makers[name])
        self.assertIs(makers["imgrelay-proxy"].options, ProxyOptions)
        self.assertIs(makers["imgrelay-cache"].options, CacheOptions)


class OptionsTests(SynchronousTestCase):
    """
    The options validate themselves with helpful messages.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, self.dir)

    def test_proxyOptions(self) -> None:
        """
        A full proxy command line parses into the expected values, with a
        session name derived from the host and the directory that is a safe
        directory name on the cache.
        """
        options = ProxyOptions()
        options.parseOptions(["--images-dir", self.dir, "--connect", "tcp:host=dest:port=7070", "--oneshot"])
        self.assertEqual(
            {k: options[k] for k in ("images-dir", "connect", "local", "oneshot")},
            {"images-dir": self.dir, "connect": "tcp:host=dest:port=7070", "local": None, "oneshot": 1},
        )
        session = options.config().sessionName
        assert session is not None
        self.assertEqual(session, defaultSessionName(self.dir))
        self.assertIn("-" + os.path.basename(self.dir) + "-", session)
        self.assertEqual(checkSessionDirName(session), session)

    def test_compress(self) -> None:
        """
        C{--compress} is C{auto} by default, takes the other modes, refuses
        others and refuses a mode with C{--link criu}, naming the flag.
        """
        base = ["--images-dir", self.dir, "--connect", "tcp:host=dest:port=7070"]
        options = ProxyOptions()
        options.parseOptions(base)
        self.assertEqual(options.config().compress, "auto")
        options = ProxyOptions()
        options.parseOptions([*base, "--compress", "lz4"])
        self.assertEqual(options.config().compress, "lz4")
        for extra, text in ((["--compress", "brotli"], "--compress: unknown compression"),
                            (["--compress", "zstd", "--link", "criu"], "--link criu sends images raw")):
            error = self.assertRaises(UsageError, ProxyOptions().parseOptions, [*base, *extra])
            self.assertIn(text, str(error))

    def test_cacheOptions(self) -> None:
        """
        A full cache command line parses into the expected values.
        """
        options = CacheOptions()
        options.parseOptions(["-D", self.dir, "--listen", "tcp:7070", "--local", "unix:/tmp/x.sock"])
        self.assertEqual(
            {k: options[k] for k in ("images-dir", "listen", "local", "oneshot")},
            {"images-dir": self.dir, "listen": "tcp:7070", "local": "unix:/tmp/x.sock", "oneshot": 0},
        )

    def assertUsage(self, options: object, args: list[str], expected: str) -> None:
        error = self.assertRaises(UsageError, options.parseOptions, args)  # type: ignore[attr-defined]
        self.assertIn(expected, str(error))

    def test_required(self) -> None:
        """
        The images directory and the link endpoint are required.
        """
        self.assertUsage(ProxyOptions(), ["--connect", "tcp:host=a:port=1"], "--images-dir is required")
        self.assertUsage(ProxyOptions(), ["-D", self.dir], "--connect is required")
        self.assertUsage(CacheOptions(), ["-D", self.dir], "--listen is required")

    def test_badValues(self) -> None:
        """
        A missing directory and malformed endpoints are refused, naming the
        option.
        """
        self.assertUsage(ProxyOptions(), ["-D", self.dir + "/nope", "--connect", "tcp:host=a:port=1"], "is not a directory")
        self.assertUsage(ProxyOptions(), ["-D", self.dir, "--connect", "bogus:x"], "--connect: 'bogus:x' is not a valid endpoint")
        self.assertUsage(CacheOptions(), ["-D", self.dir, "--listen", "tcp:notaport"], "--listen")
        self.assertUsage(CacheOptions(), ["-D", self.dir, "--listen", "tcp:1", "--local", "nope:"], "--local")


class ServiceTests(SynchronousTestCase):
    """
    The plugins build the public services.
    """

    def test_proxyService(self) -> None:
        """
        The proxy's service holds a L{ProxyService} for the options.
        """
        d = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, d)
        options = ProxyOptions()
        options.parseOptions(["-D", d, "--connect", "tcp:host=127.0.0.1:port=1", "--session", "s1"])
        service = makeProxyService(options, MemoryReactorClock())
        verifyObject(IService, service)
        (inner,) = list(service)  # type: ignore[call-overload]
        self.assertIsInstance(inner, ProxyService)
        self.assertEqual(inner.sessionName, "s1")

    def test_cacheService(self) -> None:
        """
        The cache's service holds a L{CacheService}.
        """
        d = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, d)
        options = CacheOptions()
        options.parseOptions(["-D", d, "--listen", "tcp:0"])
        service = makeCacheService(options, MemoryReactorClock())
        (inner,) = list(service)  # type: ignore[call-overload]
        self.assertIsInstance(inner, CacheService)


class ExitTests(SynchronousTestCase):
    """
    L{_exit.stopWithStatus} stops the reactor and sets the exit status.
    """

    def setUp(self) -> None:
        self.registered: list[object] = []
        self.patch(_exit, "_status", [])
        self.patch(_exit.atexit, "register", self.registered.append)

    def test_failureStatus(self) -> None:
        """
        A non-zero status is applied at interpreter exit; later calls do not
        change it.
        """
        reactor = MemoryReactorClock()
        reactor.running = True
        stopped: list[bool] = []
        self.patch(reactor, "stop", lambda: stopped.append(True))
        _exit.stopWithStatus(reactor, 1)
        _exit.stopWithStatus(reactor, 0)
        self.assertEqual(stopped, [True])
        self.assertEqual(self.registered, [_exit._exitWithStatus])
        self.assertEqual(_exit._status, [1])

    def test_success(self) -> None:
        """
        Status 0 is applied at interpreter exit too, so that the process
        skips the interpreter's teardown.
        """
        reactor = MemoryReactorClock()
        reactor.running = True
        stopped: list[bool] = []
        self.patch(reactor, "stop", lambda: stopped.append(True))
        _exit.stopWithStatus(reactor, 0)
        self.assertEqual((stopped, self.registered, _exit._status), ([True], [_exit._exitWithStatus], [0]))


class ProtocolAndLinkOptionsTests(SynchronousTestCase):
    """
    C{--protocol}, C{--link} and C{--idle-timeout} are checked.
    """

    def test_values(self) -> None:
        """
        Known values are taken; others are refused naming the choices.
        """
        d = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, d)
        options = CacheOptions()
        options.parseOptions(["-D", d, "--listen", "tcp:0", "--protocol", "remote", "--link", "criu",
                              "--idle-timeout", "2.5"])
        self.assertEqual((options["protocol"], options["link"], options["idle-timeout"]), ("remote", "criu", 2.5))
        defaults = ProxyOptions()
        defaults.parseOptions(["-D", d, "--connect", "tcp:host=a:port=1"])
        self.assertEqual((defaults["protocol"], defaults["link"], defaults["idle-timeout"]), ("stream", "imgrelay", 30.0))
        for bad in (["--protocol", "nfs"], ["--link", "ftp"], ["--idle-timeout", "0"]):
            self.assertRaises(UsageError, CacheOptions().parseOptions, ["-D", d, "--listen", "tcp:0", *bad])


class SessionsRootOptionsTests(SynchronousTestCase):
    """
    C{--sessions-root}, C{--retain} and C{--max-sessions} of the cache.
    """

    def setUp(self) -> None:
        self.root = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, self.root)

    def assertUsage(self, args: list[str], expected: str) -> None:
        error = self.assertRaises(UsageError, CacheOptions().parseOptions, args)
        self.assertIn(expected, str(error))

    def test_values(self) -> None:
        """
        A sessions root replaces the images directory; C{--retain} and
        C{--max-sessions} parse, with defaults 0 and 64.
        """
        options = CacheOptions()
        options.parseOptions(["--sessions-root", self.root, "--listen", "tcp:0", "--retain", "90",
                              "--max-sessions", "8"])
        self.assertEqual(
            {k: options[k] for k in ("sessions-root", "images-dir", "retain", "max-sessions")},
            {"sessions-root": self.root, "images-dir": None, "retain": 90.0, "max-sessions": 8},
        )
        defaults = CacheOptions()
        defaults.parseOptions(["-D", self.root, "--listen", "tcp:0"])
        self.assertEqual((defaults["retain"], defaults["max-sessions"], defaults["sessions-root"]), (0.0, 64, None))

    def test_exclusive(self) -> None:
        """
        C{--sessions-root} excludes C{--images-dir} and C{--local}; one of
        the two directories is required.
        """
        self.assertUsage(["--sessions-root", self.root, "-D", self.root, "--listen", "tcp:0"], "exclude each other")
        self.assertUsage(["--sessions-root", self.root, "--local", "unix:/tmp/x.sock", "--listen", "tcp:0"],
                         "exclude each other")
        self.assertUsage(["--listen", "tcp:0"], "--images-dir is required")

    def test_refusedCombinations(self) -> None:
        """
        C{--oneshot} (one session) and C{--link criu} (no session names) are
        refused with a sessions root.
        """
        self.assertUsage(["--sessions-root", self.root, "--listen", "tcp:0", "--oneshot"], "--oneshot")
        self.assertUsage(["--sessions-root", self.root, "--listen", "tcp:0", "--link", "criu"], "--link criu")

    def test_badValues(self) -> None:
        """
        A negative or non-numeric retention time, a non-positive session
        count, a missing or unsafe root are refused.
        """
        base = ["--sessions-root", self.root, "--listen", "tcp:0"]
        for bad in (["--retain", "-1"], ["--retain", "soon"], ["--retain", "inf"], ["--max-sessions", "0"]):
            self.assertRaises(UsageError, CacheOptions().parseOptions, base + bad)
        self.assertUsage(["--sessions-root", self.root + "/nope", "--listen", "tcp:0"], "is not a directory")
        os.chmod(self.root, 0o777)
        self.assertUsage(base, "--sessions-root")

    def test_service(self) -> None:
        """
        The cache's service for a sessions root holds a registry with the
        options' limits, and no single slot.
        """
        options = CacheOptions()
        options.parseOptions(["--sessions-root", self.root, "--listen", "tcp:0", "--max-sessions", "3"])
        service = makeCacheService(options, MemoryReactorClock())
        (inner,) = list(service)  # type: ignore[call-overload]
        self.assertIsInstance(inner, CacheService)
        self.assertIsNone(inner.slot)
        assert inner.registry is not None
        self.assertEqual(inner.registry.maxSessions, 3)
        self.assertEqual(inner.sessions, [])


class ObservabilityOptionsTests(SynchronousTestCase):
    """
    C{--progress-interval}, C{--stats-file}, C{--status-fd} and C{--http}.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()

    def test_defaults(self) -> None:
        """
        By default: progress lines every 5 seconds on both daemons, nothing
        else.
        """
        cache = CacheOptions()
        cache.parseOptions(["-D", self.dir, "--listen", "tcp:0"])
        self.assertEqual(cache.observability(), Observability(5.0, None, None, None))
        proxy = ProxyOptions()
        proxy.parseOptions(["-D", self.dir, "--connect", "tcp:host=a:port=1"])
        self.assertEqual(proxy.observability(), Observability(5.0, None, None, None))
        proxy = ProxyOptions()
        proxy.parseOptions(["-D", self.dir, "--connect", "tcp:host=a:port=1", "--progress-interval", "1"])
        self.assertEqual(proxy.observability().progressInterval, 1.0)

    def test_values(self) -> None:
        """
        Each option is taken (the stats file made absolute) and reaches the
        service.
        """
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.dir)
        options = CacheOptions()
        options.parseOptions(["-D", self.dir, "--listen", "tcp:0", "--progress-interval", "0.5",
                              "--stats-file", "stats.jsonl", "--status-fd", str(w),
                              "--http", "tcp:0:interface=127.0.0.1"])
        expected = Observability(0.5, os.path.join(os.path.realpath(self.dir), "stats.jsonl"), w, "tcp:0:interface=127.0.0.1")
        self.assertEqual(options.observability(), expected)
        service = makeCacheService(options, MemoryReactorClock())
        (inner,) = list(service)  # type: ignore[call-overload]
        self.assertEqual(inner.observer.options, expected)
        proxy = ProxyOptions()
        proxy.parseOptions(["-D", self.dir, "--connect", "tcp:host=a:port=1", "--status-fd", str(w)])
        (innerProxy,) = list(makeProxyService(proxy, MemoryReactorClock()))  # type: ignore[call-overload]
        self.assertEqual(innerProxy.observer.options.statusFd, w)

    def test_badValues(self) -> None:
        """
        A negative interval, a descriptor that is not open, a stats file in
        a missing directory and a malformed HTTP endpoint are refused.
        """
        # The highest descriptor the process may have: no file reuses it,
        # whatever the options open meanwhile (the reactor's own).
        import resource

        w = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1
        self.assertRaises(OSError, os.fstat, w)
        base = ["-D", self.dir, "--listen", "tcp:0"]
        for bad, text in (
            (["--progress-interval", "-1"], "is not a number of seconds"),
            (["--status-fd", str(w)], "is not open"),
            (["--status-fd", "-3"], "is not a file descriptor"),
            (["--stats-file", os.path.join(self.dir, "nope", "s.jsonl")], "--stats-file"),
            (["--http", "bogus:1"], "--http"),
        ):
            error = self.assertRaises(UsageError, CacheOptions().parseOptions, base + bad)
            self.assertIn(text, str(error))


class ResumeAndMemoryOptionsTests(SynchronousTestCase):
    """
    The options of link resume and of the cache's memory bound reach the
    services.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, self.dir)

    def test_defaults(self) -> None:
        """
        By default: a 64 MiB window, 60 s to reconnect, 120 s to resume, no
        memory bound.
        """
        proxy = ProxyOptions()
        proxy.parseOptions(["-D", self.dir, "--connect", "tcp:host=127.0.0.1:port=1"])
        cache = CacheOptions()
        cache.parseOptions(["-D", self.dir, "--listen", "tcp:0"])
        self.assertEqual((proxy["window"], proxy["reconnect-timeout"]), (64 << 20, 60.0))
        self.assertEqual((cache["resume-timeout"], cache["max-memory"]), (120.0, None))

    def test_reachServices(self) -> None:
        """
        Given values are those the services use.
        """
        proxy = ProxyOptions()
        proxy.parseOptions(
            ["-D", self.dir, "--connect", "tcp:host=127.0.0.1:port=1", "--window", str(8 << 20),
             "--reconnect-timeout", "5"]
        )
        (inner,) = list(makeProxyService(proxy, MemoryReactorClock()))  # type: ignore[call-overload]
        self.assertEqual((inner.config.window, inner.config.reconnectTimeout), (8 << 20, 5.0))
        cache = CacheOptions()
        cache.parseOptions(["-D", self.dir, "--listen", "tcp:0", "--resume-timeout", "7", "--max-memory", "2G"])
        (service,) = list(makeCacheService(cache, MemoryReactorClock()))  # type: ignore[call-overload]
        self.assertEqual(service.bound.limit, 2 << 30)
        self.assertEqual(service._linkFactory.resumes.timeout, 7.0)

    def test_badValues(self) -> None:
        """
        A window under 4 MiB, a timeout that is not positive, and a size
        that is not one are refused.
        """
        for args in (["--window", "1000"], ["--reconnect-timeout", "0"]):
            self.assertRaises(
                UsageError, ProxyOptions().parseOptions,
                ["-D", self.dir, "--connect", "tcp:host=127.0.0.1:port=1", *args],
            )
        for args in (["--resume-timeout", "-1"], ["--max-memory", "lots"]):
            self.assertRaises(UsageError, CacheOptions().parseOptions, ["-D", self.dir, "--listen", "tcp:0", *args])
