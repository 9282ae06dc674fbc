# -*- test-case-name: tests.local.test_proctree -*-
"""
A process tree by its root's pid, as CRIU dumps and restores one: every
task in it (L{treeOf}), and a signal to all of them (L{signalTree}), to
resume a tree CRIU left stopped (C{SIGCONT}) or to end one (C{SIGKILL});
and what one task holds (L{residentBytes}) and does (L{state}).
"""

from __future__ import annotations

import os
import signal


def children(pid: int) -> list[int]:
    """
    @return: The processes whose parent is C{pid} (of any of its threads).
    """
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(child) for child in f.read().split())
        except OSError:
            continue
    return found


def treeOf(pid: int) -> list[int]:
    """
    @return: C{pid} and every process below it, parents before children;
        empty if there is no such process.
    """
    if not os.path.exists(f"/proc/{pid}"):
        return []
    tree, todo, seen = [], [pid], set()
    while todo:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.add(current)
        tree.append(current)
        todo.extend(children(current))
    return tree


def signalTree(pid: int, signum: int) -> list[int]:
    """
    Send C{signum} to every process of the tree rooted at C{pid}.

    @return: The processes signalled (those gone meanwhile left out).
    """
    sent = []
    for member in treeOf(pid):
        try:
            os.kill(member, signum)
        except ProcessLookupError:
            continue
        sent.append(member)
    return sent


def resumeTree(pid: int) -> list[int]:
    """
    Resume a tree CRIU left stopped (C{--leave-stopped}).
    """
    return signalTree(pid, signal.SIGCONT)


def killTree(pid: int) -> list[int]:
    """
    Kill a tree, stopped or not.
    """
    return signalTree(pid, signal.SIGKILL)


def residentBytes(pid: int) -> int:
    """
    @return: The memory C{pid} has resident (C{VmRSS}), bytes; 0 for a
        process that has none (a zombie).
    @raise OSError: If there is no such process.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def state(pid: int) -> str | None:
    """
    @return: The state letter of C{pid} (C{"T"} stopped, C{"Z"} zombie,
        ...), or None if there is no such process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:][:1].decode()
