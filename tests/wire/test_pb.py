"""
Tests for L{imgrelay.wire.pb}: the checked-in generated modules match what
C{tools/regen-protos} produces, and protobuf runs on its C{upb} backend.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from google.protobuf.internal import api_implementation
from twisted.trial.unittest import SynchronousTestCase

import imgrelay
from imgrelay.wire.pb import criu_pb2, fetch_pb2, link_pb2

_ROOT = Path(imgrelay.__file__).resolve().parent.parent
_PB = _ROOT / "imgrelay" / "wire" / "pb"
_REGEN = _ROOT / "tools" / "regen-protos"


class StalenessTests(SynchronousTestCase):
    """
    The checked-in C{_pb2.py} and C{_pb2.pyi} files are exactly what the
    pinned grpcio-tools generates from C{proto/imgrelay/}.
    """

    def setUp(self) -> None:
        if importlib.util.find_spec("grpc_tools") is None:
            raise self.skipTest("grpc_tools (grpcio-tools, in the 'test' extra) is not installed")

    def test_regenerationMatches(self) -> None:
        """
        Running C{tools/regen-protos} into an empty directory produces the
        same set of files as is checked in, each byte for byte identical.
        """
        out = Path(self.mktemp())
        out.mkdir(parents=True)
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        result = subprocess.run(
            ["sh", str(_REGEN), str(out.resolve())],
            env=env,
            capture_output=True,
            timeout=300,
        )
        self.assertEqual(
            result.returncode,
            0,
            f"regen-protos failed:\n{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}",
        )
        generated = sorted(p.name for p in out.iterdir())
        checkedIn = sorted(p.name for p in _PB.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi")))
        self.assertEqual(generated, ["criu_pb2.py", "criu_pb2.pyi", "fetch_pb2.py", "fetch_pb2.pyi", "link_pb2.py", "link_pb2.pyi"])
        self.assertEqual(generated, checkedIn)
        for name in generated:
            self.assertTrue(
                (out / name).read_bytes() == (_PB / name).read_bytes(),
                f"imgrelay/wire/pb/{name} is stale: run tools/regen-protos",
            )


class BackendTests(SynchronousTestCase):
    """
    protobuf runs on its fast C backend.
    """

    def test_upb(self) -> None:
        """
        The protobuf implementation in use is C{upb}, not pure Python.
        """
        self.assertEqual(api_implementation.Type(), "upb")

    def test_messagesUseUpb(self) -> None:
        """
        imgrelay's generated message classes are built by the upb extension.
        """
        for cls in [criu_pb2.StreamRequest, link_pb2.ProxyMessage, link_pb2.CacheMessage, fetch_pb2.FetchMessage]:
            self.assertTrue(type(cls).__module__.startswith("google._upb"), type(cls).__module__)
