"""
End-to-end tests: the real twistd plugins as subprocesses on 127.0.0.1,
driven by the CRIU-like client.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from typing import Any, Optional

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.testing import criu, traces
from imgrelay.testing.daemons import Daemon, freePort, unixListening


class _DaemonCase(SynchronousTestCase):
    """
    Starts the daemons in a fresh directory, on a free port.
    """

    def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="imgrelay-e2e-")
        self.dumpDir = os.path.join(self.base, "dump")
        self.restoreDir = os.path.join(self.base, "restore")
        os.mkdir(self.dumpDir, 0o700)
        os.mkdir(self.restoreDir, 0o700)
        self.capture = os.path.join(self.dumpDir, "streamer-capture.sock")
        self.serve = os.path.join(self.restoreDir, "streamer-serve.sock")
        self.port = freePort()

    def daemon(self, plugin: str, *args: str) -> Daemon:
        d = Daemon(plugin, list(args), os.path.join(self.base, plugin + ".log"))
        self.addCleanup(d.stop)
        return d

    def cache(self, *extra: str) -> Daemon:
        return self.daemon(
            "imgrelay-cache", "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--images-dir", self.restoreDir, *extra
        )

    def proxy(self, *extra: str) -> Daemon:
        return self.daemon(
            "imgrelay-proxy", "--connect", f"tcp:host=127.0.0.1:port={self.port}", "--images-dir", self.dumpDir, *extra
        )


    def migrate(self, images: dict[str, bytes], asked: list[str], proxy: Daemon, cache: Daemon) -> dict[str, Optional[bytes]]:
        """
        Dump C{images} (C{pages-1.img} open the whole time, the others sent
        meanwhile, C{inventory.img} last) while a restore asks for C{asked};
        both oneshot daemons must exit 0.

        @return: What the restore got.
        """
        cache.waitFor(path=self.serve)
        proxy.waitFor(path=self.capture)
        restored: dict[str, Optional[bytes]] = {}

        def restore() -> None:
            r = criu.StreamRestorer(self.serve)
            restored.update(r.fetchAll(asked))
            r.close()

        restorer = threading.Thread(target=restore)
        restorer.start()
        dumper = criu.StreamDumper(self.capture)
        big = dumper.open("pages-1.img")
        for name in sorted(images):
            if name != "pages-1.img":
                dumper.send(name, images[name])
        criu.writeAll(big, images["pages-1.img"])
        os.close(big)
        dumper.finish()
        restorer.join(120)
        self.assertFalse(restorer.is_alive())
        self.assertEqual(proxy.wait(), 0, proxy.log())
        self.assertEqual(cache.wait(), 0, cache.log())
        return restored


class EndToEndTests(_DaemonCase):
    """
    A migration through C{twistd imgrelay-proxy} and C{twistd imgrelay-cache}.
    """

    def test_migration(self) -> None:
        """
        A 256 MiB image and 300 small files, restored while they are dumped,
        arrive byte for byte; with C{--oneshot} both daemons exit 0, and
        both local sockets are removed. Their logs end with twistd's own
        last line: ending without the interpreter's teardown loses none.
        """
        cache = self.cache("--oneshot")
        proxy = self.proxy("--oneshot")
        images = {f"small-{i}.img": os.urandom(100 + 13 * i) for i in range(300)}
        images["pages-1.img"] = traces.patternBytes("pages-1.img", 256 << 20)
        restored = self.migrate(images, sorted(images) + ["memfd.img"], proxy, cache)
        self.assertIsNone(restored.pop("memfd.img"))
        self.assertEqual(sorted(restored), sorted(images))
        for name, content in images.items():
            self.assertEqual(restored[name], content, name)
        self.assertFalse(os.path.exists(self.capture))
        self.assertFalse(os.path.exists(self.serve))
        self.assertIn("complete, cache confirmed 302 images", proxy.log())  # and inventory.img
        for daemon in (proxy, cache):
            self.assertTrue(daemon.log().rstrip().endswith("Server Shut Down."), daemon.log()[-500:])

    def test_statusFdAndHttp(self) -> None:
        """
        C{twistd imgrelay-cache --status-fd N --http ... --stats-file ...}:
        the orchestrator reads the link and HTTP ports from the first
        status line, the session's completion from a later one, and
        C{/status} and C{/metrics} count it.
        """
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        statsFile = os.path.join(self.base, "stats.jsonl")
        try:
            cache = Daemon(
                "imgrelay-cache",
                ["--listen", "tcp:0:interface=127.0.0.1", "--images-dir", self.restoreDir, "--status-fd", str(w),
                 "--http", "tcp:0:interface=127.0.0.1", "--stats-file", statsFile],
                os.path.join(self.base, "cache.log"), passFds=(w,),
            )
            self.addCleanup(cache.stop)
        finally:
            os.close(w)
        received = bytearray()

        def event() -> dict[str, Any]:
            while b"\n" not in received:
                ready, _, _ = select.select([r], [], [], 30)
                self.assertTrue(ready, cache.log())
                data = os.read(r, 1 << 16)
                self.assertTrue(data, cache.log())
                received.extend(data)
            line, _, rest = bytes(received).partition(b"\n")
            received[:] = rest
            return dict(json.loads(line))

        listening = event()
        self.assertEqual(listening["event"], "listening")
        self.port = listening["link"]["port"]
        proxy = self.proxy("--oneshot")
        proxy.waitFor(path=self.capture)
        dumper = criu.StreamDumper(self.capture)
        dumper.send("inventory.img", b"inventory")
        dumper.close()
        self.assertEqual(proxy.wait(), 0, proxy.log())
        self.assertEqual([event()["event"] for _ in range(2)], ["first-image", "complete"])
        base = f"http://127.0.0.1:{listening['http']['port']}"
        with urllib.request.urlopen(base + "/status", timeout=30) as response:
            document = json.load(response)
        self.assertEqual([(s["state"], s["images"], s["bytes"]) for s in document["sessions"]], [("complete", 1, 9)])
        with urllib.request.urlopen(base + "/metrics", timeout=30) as response:
            self.assertIn(b'imgrelay_sessions_total{outcome="complete"} 1.0', response.read())
        with open(statsFile) as f:
            self.assertEqual(json.loads(f.read())["images"], 1)

    def test_socketMode(self) -> None:
        """
        Both local sockets are created with mode 0600.
        """
        cache = self.cache()
        proxy = self.proxy()
        cache.waitFor(path=self.serve)
        proxy.waitFor(path=self.capture)
        self.assertEqual(os.stat(self.serve).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(self.capture).st_mode & 0o777, 0o600)

    def test_cacheUnreachable(self) -> None:
        """
        With no cache listening, a oneshot proxy retries until its
        reconnect timeout, then exits 1 naming the cause.
        """
        proxy = self.proxy("--oneshot", "--reconnect-timeout", "0.5")
        proxy.waitFor(path=self.capture)
        dumper = criu.StreamDumper(self.capture)
        try:
            dumper.send("inventory.img", b"x")
        except OSError:
            pass
        dumper.close()
        self.assertEqual(proxy.wait(), 1)
        self.assertIn("cannot reach the cache", proxy.log())
        self.assertIn("no link to the cache", proxy.log())
        self.assertIn("for 0.5 s (last error: Connection was refused", proxy.log())

    def test_bindError(self) -> None:
        """
        A cache whose link port is taken exits at once with one clear line.
        """
        taken = socket.socket()
        taken.bind(("127.0.0.1", self.port))
        taken.listen()
        self.addCleanup(taken.close)
        cache = self.cache()
        self.assertEqual(cache.wait(), 1)
        self.assertIn(f"imgrelay-cache: cannot listen on 127.0.0.1:{self.port}", cache.log())
        self.assertNotIn("Traceback", cache.log())


class RemoteEndToEndTests(SynchronousTestCase):
    """
    An iterative migration through the twistd plugins in C{--protocol
    remote}.
    """

    def test_predumpsAndDump(self) -> None:
        """
        Two pre-dumps and a final dump through C{twistd imgrelay-proxy} and
        C{twistd imgrelay-cache} with C{--protocol remote --oneshot}: the
        restore reads every snapshot's images and the snapshot list, its
        FINISH ends the cache, and both exit 0.
        """
        self.predumpsAndDump()

    def test_compressed(self) -> None:
        """
        The same with C{--compress zstd}.
        """
        proxy = self.predumpsAndDump("--compress", "zstd")
        self.assertIn("link compression zstd (--compress zstd)", proxy.log())

    def predumpsAndDump(self, *proxyExtra: str) -> Daemon:
        base = tempfile.mkdtemp(prefix="imgrelay-e2e-remote-")
        dumpDir, restoreDir = os.path.join(base, "dump"), os.path.join(base, "restore")
        os.mkdir(dumpDir, 0o700)
        os.mkdir(restoreDir, 0o700)
        port = freePort()
        cache = Daemon("imgrelay-cache", ["--protocol", "remote", "--listen", f"tcp:{port}:interface=127.0.0.1",
                                          "--images-dir", restoreDir, "--oneshot"], os.path.join(base, "cache.log"))
        self.addCleanup(cache.stop)
        proxy = Daemon("imgrelay-proxy", ["--protocol", "remote", "--connect", f"tcp:host=127.0.0.1:port={port}",
                                          "--images-dir", dumpDir, "--oneshot", *proxyExtra],
                       os.path.join(base, "proxy.log"))
        self.addCleanup(proxy.stop)
        cache.waitFor(path=os.path.join(restoreDir, "img-cache.sock"))
        proxy.waitFor(path=os.path.join(dumpDir, "img-proxy.sock"))
        dump = criu.RemoteClient(os.path.join(dumpDir, "img-proxy.sock"))
        images = {}
        for i, snapshot in enumerate(["/mig/d1", "/mig/d2", "/mig/d3"]):
            dump.pushParent(snapshot)
            images[(snapshot, "pages-1.img")] = traces.patternBytes(snapshot, (8 << 20) + i)
            images[(snapshot, "pagemap-1.img")] = os.urandom(200)
            if snapshot == "/mig/d3":
                images[(snapshot, "pstree.img")] = os.urandom(64)
                images[(snapshot, "inventory.img")] = os.urandom(86)
            for (s, name), content in images.items():
                if s == snapshot:
                    dump.write(s, name, content)
            dump.finish(criu.O_WRONLY)
        self.assertEqual(proxy.wait(), 0, proxy.log())
        restore = criu.RemoteClient(os.path.join(restoreDir, "img-cache.sock"))
        self.assertEqual(restore.readParents(), ["/mig/d1", "/mig/d2", "/mig/d3"])
        for (snapshot, name), content in images.items():
            self.assertEqual(restore.read(snapshot, name), content, (snapshot, name))
        self.assertIsNone(restore.read("/mig/d3", "memfd.img"))
        restore.finish(criu.O_RDONLY)
        self.assertEqual(cache.wait(), 0, cache.log())
        return proxy


class CuttingRelay:
    """
    A TCP relay between proxy and cache, in a thread, that resets every
    connection it carries after each C{every} bytes from the proxy: a
    network that keeps breaking. An orderly close is passed on as one.

    @ivar cuts: How many connections it reset.
    """

    def __init__(self, target: int, every: int) -> None:
        self.target = target
        self.every = every
        self.cuts = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select
        import struct

        self.listener.settimeout(0.2)
        forwarded = 0
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            server = socket.create_connection(("127.0.0.1", self.target))
            peers = {client: server, server: client}
            reading = [client, server]
            cut = False
            while reading and not cut and not self._stop:
                readable, _, _ = select.select(reading, [], [], 0.2)
                for sock in readable:
                    data = sock.recv(1 << 20)
                    if not data:
                        reading.remove(sock)
                        try:
                            peers[sock].shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        continue
                    if sock is client:
                        room = self.every - forwarded % self.every
                        if len(data) >= room:
                            peers[sock].sendall(data[:room])
                            forwarded += room
                            cut = True
                            break
                        forwarded += len(data)
                    peers[sock].sendall(data)
            for sock in (client, server):
                if cut:
                    # A reset, not an orderly close.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            if cut:
                self.cuts += 1

    def stop(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.listener.close()


class ResumeEndToEndTests(_DaemonCase):
    """
    A migration through the real daemons over a link that breaks again and
    again: the proxy reconnects and resumes, the images arrive byte for byte.
    """

    def test_linkKeepsBreaking(self) -> None:
        """
        A 200 MiB image and 50 small files cross a link reset after every
        24 MiB the proxy sends, restored as they arrive; both oneshot
        daemons exit 0 and the logs show the resumes.
        """
        relay = CuttingRelay(self.port, 24 << 20)
        self.addCleanup(relay.stop)
        # Only a bound: each cut is resumed within it. (The proxy's last
        # close passes as an orderly one: the cache need not wait it out.)
        cache = self.cache("--oneshot", "--resume-timeout", "30")
        proxy = self.daemon(
            "imgrelay-proxy", "--connect", f"tcp:host=127.0.0.1:port={relay.port}", "--images-dir", self.dumpDir,
            # Raw, so that the relay sees every byte: through this Python
            # relay, auto would compress the patterned image to little.
            "--oneshot", "--compress", "none",
        )
        images = {f"small-{i}.img": os.urandom(100 + 97 * i) for i in range(50)}
        images["pages-1.img"] = traces.patternBytes("pages-1.img", 200 << 20)
        restored = self.migrate(images, sorted(images), proxy, cache)
        self.assertEqual(sorted(restored), sorted(images))
        for name, content in images.items():
            self.assertEqual(restored[name], content, name)
        self.assertGreaterEqual(relay.cuts, 8)
        self.assertIn("link resumed", proxy.log())
        self.assertIn("proxy resumed the link", cache.log())


class SessionsRootEndToEndTests(SynchronousTestCase):
    """
    One C{twistd imgrelay-cache --sessions-root} receiving from two
    C{twistd imgrelay-proxy}.
    """

    def test_twoSessions(self) -> None:
        """
        Two proxies, one named with C{--session} and one with the default
        name (logged at start), dump into one cache; each session is
        restored from C{ROOT/NAME}, twice within C{--retain}, byte for byte,
        and a restore of one never sees the other's images. Stopping the
        cache removes the session directories.
        """
        base = tempfile.mkdtemp(prefix="imgrelay-e2e-sessions-")
        root = os.path.join(base, "root")
        os.mkdir(root, 0o700)
        port = freePort()
        cache = Daemon("imgrelay-cache", ["--listen", f"tcp:{port}:interface=127.0.0.1", "--sessions-root", root,
                                          "--retain", "600"], os.path.join(base, "cache.log"))
        self.addCleanup(cache.stop)
        cache.waitFor(port=port)
        dumps: dict[str, dict[str, bytes]] = {}
        names = []
        for i, session in enumerate([["--session", "web-1"], []]):
            dumpDir = os.path.join(base, f"dump{i}")
            os.mkdir(dumpDir, 0o700)
            proxy = Daemon("imgrelay-proxy", ["--connect", f"tcp:host=127.0.0.1:port={port}", "--images-dir",
                                              dumpDir, "--oneshot", *session], os.path.join(base, f"proxy{i}.log"))
            self.addCleanup(proxy.stop)
            capture = os.path.join(dumpDir, "streamer-capture.sock")
            proxy.waitFor(path=capture)
            images = {"inventory.img": os.urandom(90), f"only-{i}.img": traces.patternBytes(str(i), (2 << 20) + i)}
            dumper = criu.StreamDumper(capture)
            for name, content in sorted(images.items()):
                dumper.send(name, content)
            dumper.close()
            self.assertEqual(proxy.wait(), 0, proxy.log())
            name = "web-1" if session else proxy.log().split("session name ")[1].split()[0]
            names.append(name)
            dumps[name] = images
        self.assertEqual(names[0], "web-1")
        self.assertTrue(names[1].startswith(socket.gethostname()[:20]), names[1])
        self.assertEqual(sorted(os.listdir(root)), sorted(names))
        for name, images in dumps.items():
            for _ in range(2):
                r = criu.StreamRestorer(os.path.join(root, name, "streamer-serve.sock"))
                other = [n for n in ("only-0.img", "only-1.img") if n not in images]
                restored = r.fetchAll(sorted(images) + other)
                r.close()
                self.assertEqual(restored, {**images, **{n: None for n in other}})
        cache.stop()
        self.assertEqual(os.listdir(root), [], cache.log())


class ReadinessTests(SynchronousTestCase):
    """
    L{Daemon.waitFor} waits for a UNIX socket that listens, not for its
    file.
    """

    def test_unixListening(self) -> None:
        """
        A socket bound but not yet listening (Twisted sets the mode and
        listens after the bind made the file) is not ready: a client would
        be refused. It is once it listens, and no longer once closed.
        """
        path = os.path.join(tempfile.mkdtemp(prefix="imgrelay-e2e-"), "x.sock")
        self.assertFalse(unixListening(path))
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(path)
            self.assertTrue(os.path.exists(path))
            self.assertFalse(unixListening(path))
            with socket.socket(socket.AF_UNIX) as client:
                self.assertRaises(ConnectionRefusedError, client.connect, path)
            s.listen(1)
            self.assertTrue(unixListening(path))
        self.assertFalse(unixListening(path))


class LazyImportTests(SynchronousTestCase):
    """
    A daemon without C{--http} does not load the HTTP server or
    C{prometheus_client}.
    """

    def test_httpOnlyWhenAsked(self) -> None:
        """
        Services made without an HTTP endpoint leave C{twisted.web} and
        C{prometheus_client} unimported; one made with it imports them.
        """
        d = tempfile.mkdtemp()
        script = (
            "import sys, imgrelay\n"
            f"imgrelay.CacheService(imgrelay.CacheConfig(imagesDir={d!r}, listen='tcp:0:interface=127.0.0.1'))\n"
            f"imgrelay.ProxyService(imgrelay.ProxyConfig(imagesDir={d!r}, connect='tcp:host=127.0.0.1:port=1'))\n"
            "print('prometheus_client' in sys.modules, 'twisted.web.server' in sys.modules)\n"
            f"imgrelay.CacheService(imgrelay.CacheConfig(imagesDir={d!r}, listen='tcp:0', local='unix:' + {d!r} + '/x.sock',"
            " observability=imgrelay.Observability(http='tcp:0')))\n"
            "print('prometheus_client' in sys.modules, 'twisted.web.server' in sys.modules)\n"
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, timeout=60)
        self.assertEqual(out.stdout.split(b"\n")[:2], [b"False False", b"True True"])
