"""
Tests for L{imgrelay.core.observers}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.core.observers import Observers


class ObserversTests(SynchronousTestCase):
    """
    L{Observers} tells its callables in order.
    """

    def test_tell(self) -> None:
        """
        Every observer is told of every value, in the order added.
        """
        told: list[tuple[str, int]] = []
        observers: Observers[int] = Observers()
        observers.add(lambda v: told.append(("a", v)))
        observers.add(lambda v: told.append(("b", v)))
        observers.tell(1)
        observers.tell(2)
        self.assertEqual(told, [("a", 1), ("b", 1), ("a", 2), ("b", 2)])

    def test_addedWhileTelling(self) -> None:
        """
        An observer added while the others are told hears from the next
        value on.
        """
        told: list[int] = []
        observers: Observers[int] = Observers()
        observers.add(lambda v: observers.add(told.append) if not told and v == 1 else None)
        observers.tell(1)
        self.assertEqual(told, [])
        observers.tell(2)
        self.assertEqual(told, [2])

    def test_tellLast(self) -> None:
        """
        C{tellLast} tells every observer once, then forgets them.
        """
        told: list[int] = []
        observers: Observers[int] = Observers()
        observers.add(told.append)
        observers.tellLast(1)
        observers.tell(2)
        self.assertEqual(told, [1])
