# -*- test-case-name: tests.core.test_observers -*-
"""
L{Observers}: the callables that asked to be told of something, told in
the order they asked.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Observers(Generic[T]):
    """
    Callables to tell of each value, in the order they were added; one
    added while the others are told is told from the next value on.
    """

    __slots__ = ("_observers",)

    def __init__(self) -> None:
        self._observers: list[Callable[[T], None]] = []

    def add(self, observer: Callable[[T], None]) -> None:
        """
        Tell C{observer} of every value from now on.
        """
        self._observers.append(observer)

    def tell(self, value: T) -> None:
        """
        Tell every observer of C{value}.
        """
        for observer in list(self._observers):
            observer(value)

    def tellLast(self, value: T) -> None:
        """
        Tell every observer of C{value}, the last there will be, and forget
        them.
        """
        observers, self._observers = self._observers, []
        for observer in observers:
            observer(value)
