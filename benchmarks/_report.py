"""
The table: medians, minima and maxima over the runs, per scenario and
system, and the issue's targets checked against them.
"""

from __future__ import annotations

import statistics
from typing import Callable, Sequence

from benchmarks._runner import RunResult
from benchmarks._scenarios import Scenario

GiB = float(1 << 30)
MiB = float(1 << 20)


def _median(results: Sequence[RunResult], f: Callable[[RunResult], float]) -> float:
    return statistics.median(f(r) for r in results)


def table(scenarios: Sequence[Scenario], results: Sequence[RunResult]) -> str:
    """
    @return: The main table, one row per scenario and system.
    """
    head = (
        f"{'scenario':<9} {'system':<9} {'MB':>7} {'s median':>9} {'s min':>8} {'s max':>8} {'GB/s':>6} "
        f"{'x base':>6} {'proxy':>6} {'cache':>6} {'proxy':>6} {'cache':>6} {'files/s':>8}\n"
        f"{'':<9} {'':<9} {'':>7} {'':>9} {'':>8} {'':>8} {'':>6} {'':>6} "
        f"{'CPUs/G':>6} {'CPUs/G':>6} {'RSS MB':>6} {'RSS MB':>6} {'':>8}"
    )
    lines = [head, "-" * len(head.splitlines()[0])]
    for sc in scenarios:
        base = [r for r in results if r.scenario == sc.key and r.system == "baseline"]
        baseRate = sc.totalBytes / _median(base, lambda r: r.seconds) / 1e9 if base else float("nan")
        for system in ("imgrelay", "baseline", "naive"):
            rs = [r for r in results if r.scenario == sc.key and r.system == system]
            if not rs:
                continue
            secs = [r.seconds for r in rs]
            med = statistics.median(secs)
            rate = sc.totalBytes / med / 1e9
            gib = sc.totalBytes / GiB
            files = f"{len(sc.images) / med:8.0f}" if sc.countFiles else f"{'':>8}"
            lines.append(
                f"{sc.key:<9} {system:<9} {sc.totalBytes / 1e6:7.0f} {med:9.3f} {min(secs):8.3f} {max(secs):8.3f} "
                f"{rate:6.2f} {rate / baseRate:6.2f} "
                f"{_median(rs, lambda r: r.dumpSide.cpu) / gib:6.2f} {_median(rs, lambda r: r.restoreSide.cpu) / gib:6.2f} "
                f"{max(r.dumpSide.peakRss for r in rs) / MiB:6.0f} {max(r.restoreSide.peakRss for r in rs) / MiB:6.0f} {files}"
            )
    return "\n".join(lines)


def details(scenarios: Sequence[Scenario], results: Sequence[RunResult]) -> str:
    """
    @return: Secondary figures (medians): when the dump side finished, the
        clients' own CPU, and the daemons' CPU seconds and user/system split.
    """
    head = (
        f"{'scenario':<9} {'system':<9} {'dump s':>7} {'writer':>7} {'reader':>7} "
        f"{'proxy':>7} {'(usr/sys)':>11} {'cache':>7} {'(usr/sys)':>11}"
    )
    lines = [head + "\n" + f"{'':<9} {'':<9} {'':>7} {'CPU s':>7} {'CPU s':>7} {'CPU s':>7} {'life':>11} {'CPU s':>7} {'life':>11}", "-" * len(head)]
    for sc in scenarios:
        for system in ("imgrelay", "baseline", "naive"):
            rs = [r for r in results if r.scenario == sc.key and r.system == system]
            if not rs:
                continue
            lines.append(
                f"{sc.key:<9} {system:<9} {_median(rs, lambda r: r.dumpSeconds):7.3f} "
                f"{_median(rs, lambda r: r.writer.cpu):7.2f} {_median(rs, lambda r: r.reader.cpu):7.2f} "
                f"{_median(rs, lambda r: r.dumpSide.cpu):7.2f} "
                f"{_median(rs, lambda r: r.dumpSide.user):5.2f}/{_median(rs, lambda r: r.dumpSide.system):5.2f} "
                f"{_median(rs, lambda r: r.restoreSide.cpu):7.2f} "
                f"{_median(rs, lambda r: r.restoreSide.user):5.2f}/{_median(rs, lambda r: r.restoreSide.system):5.2f}"
            )
    return "\n".join(lines)


def targets(scenarios: Sequence[Scenario], results: Sequence[RunResult]) -> str:
    """
    @return: Issue 5's targets against this run's figures (information
        only: nothing fails on them).
    """
    out = []

    def mine(key: str, system: str = "imgrelay") -> list[RunResult]:
        return [r for r in results if r.scenario == key and r.system == system]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    a, aBase = mine("a"), mine("a", "baseline")
    if a and aBase:
        ratio = _median(aBase, lambda r: r.seconds) / _median(a, lambda r: r.seconds)
        out.append(f"(a) >= 0.6 of the baseline: {ratio:.2f} ({verdict(ratio >= 0.6)})")
    for sc in scenarios:
        rs = mine(sc.key)
        if not rs:
            continue
        gib = sc.totalBytes / GiB
        cpu = _median(rs, lambda r: (r.dumpSide.cpu + r.restoreSide.cpu) / gib)
        rss = max(r.restoreSide.peakRss for r in rs)
        limit = 1.05 * sc.totalBytes + 50 * MiB
        prss = max(r.dumpSide.peakRss for r in rs)
        if sc.countFiles:
            perFile = _median(rs, lambda r: (r.dumpSide.cpu + r.restoreSide.cpu) / len(sc.images))
            cpuText = f"proxy+cache CPU {perFile * 1e3:.2f} ms per file (per-GiB target not meaningful)"
        else:
            cpuText = f"proxy+cache CPU {cpu:.2f} s/GiB (<= 1.5: {verdict(cpu <= 1.5)})"
        line = (
            f"({sc.key}) {cpuText}; "
            f"cache RSS {rss / MiB:.0f} MiB (<= {limit / MiB:.0f}: {verdict(rss <= limit)}); "
            f"proxy RSS {prss / MiB:.0f} MiB (<= 100: {verdict(prss <= 100 * MiB)})"
        )
        if sc.key.startswith("c-"):
            fps = len(sc.images) / _median(rs, lambda r: r.seconds)
            line += f"; {fps:.0f} files/s (>= 3000: {verdict(fps >= 3000)})"
        out.append(line)
    return "\n".join(out)
