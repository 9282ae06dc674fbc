"""
Tests for L{imgrelay.transport.workers}.
"""

from __future__ import annotations

import threading

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from imgrelay.transport.workers import Workers


class WorkersTests(TestCase):
    """
    Work runs in the pool's threads, and comes back on the reactor's.
    """

    async def test_run(self) -> None:
        """
        Work queued before the start runs once started, off the reactor's
        thread; stopping joins the threads.
        """
        workers = Workers(reactor, "test-workers")
        d = workers.run(lambda x: (x * 2, threading.current_thread().name), 21)
        workers.startService()
        value, thread = await d
        workers.stopService()
        self.assertEqual(value, 42)
        self.assertNotEqual(thread, threading.current_thread().name)
        self.assertTrue(workers.pool.joined)
