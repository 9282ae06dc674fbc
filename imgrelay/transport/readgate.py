# -*- test-case-name: tests.transport.test_readgate -*-
"""
L{ReadGate}: whether a connection is read, when more than one thing may
want it held (a memory bound, a chunk being decoded): it is read while none
does.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.interfaces import IPushProducer

from imgrelay.transport.receiver import SocketReceiver


class ReadGate:
    """
    See the module docstring.
    """

    def __init__(self) -> None:
        self._holds: set[str] = set()
        self._receiver: Optional[SocketReceiver] = None
        self._transport: Optional[IPushProducer] = None

    def attach(self, transport: IPushProducer, receiver: Optional[SocketReceiver]) -> None:
        """
        @param transport: The connection's transport: paused and resumed
            when there is no receiver.
        @param receiver: What reads the connection in its place, if
            anything.
        """
        self._transport = transport
        self._receiver = receiver

    @property
    def reading(self) -> bool:
        """
        Whether nothing holds the connection.
        """
        return not self._holds

    def hold(self, reason: str) -> None:
        """
        Stop reading for C{reason} (until L{release} of the same reason).
        """
        if not self._holds:
            self._switch(False)
        self._holds.add(reason)

    def release(self, reason: str) -> None:
        """
        C{reason} no longer holds the connection; read if nothing else does.
        """
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        if not self._holds:
            self._switch(True)

    def _switch(self, on: bool) -> None:
        if self._receiver is not None:
            if not on:
                self._receiver.stopReading()
            elif self._receiver.connected:
                self._receiver.startReading()
        elif self._transport is not None:
            if on:
                self._transport.resumeProducing()
            else:
                self._transport.pauseProducing()
