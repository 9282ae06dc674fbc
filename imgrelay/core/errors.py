# -*- test-case-name: tests.cache.test_link -*-
"""
Errors that end a session or a connection, each carrying the reason that is
logged and sent to the peer.
"""

from __future__ import annotations


class SessionError(Exception):
    """
    A migration session cannot go on; the message says why.
    """


class ProtocolError(Exception):
    """
    A peer broke the protocol; its connection is closed.
    """
