"""
C{python -m benchmarks [--runs N] [--scenario a,b,...] [--scale F]}: see
C{benchmarks/README.md}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Optional

import attrs

from benchmarks import _criu, _perf, _profile, _scenarios, _shaped
from benchmarks._content import ReceiveBuffer, Source, expectedDigests, layout, layoutSize
from benchmarks._report import details, table, targets
from benchmarks._runner import SYSTEMS, BenchmarkError, RunResult, asDict, runOnce


def _imgrelayVersion(path: Optional[str]) -> str:
    """@return: Where the daemons' imgrelay comes from, and its git commit."""
    if path is None:
        import imgrelay

        path = os.path.dirname(os.path.dirname(os.path.abspath(imgrelay.__file__)))
    try:
        out = subprocess.run(
            ["git", "-C", path, "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except OSError:
        out = ""
    return f"{path} ({out or 'not a git checkout'})"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _streamKeys(spec: Optional[str]) -> list[str]:
    """
    @param spec: C{--scenario}'s value.
    @return: The keys of L{_scenarios} it names (all if none is named at
        all), leaving out the real-CRIU and the shaped-link ones.
    @raise KeyError: For an unknown key.
    """
    if not spec:
        return _scenarios.select(spec)
    others = ("criu", *_criu.KEYS, "net", *_shaped.KEYS)
    rest = [p for p in spec.split(",") if p.strip() and p.strip() not in others]
    return _scenarios.select(",".join(rest)) if rest else []


def _streamBenchmarks(args: argparse.Namespace, keys: list[str], systems: list[str]) -> Optional[list[RunResult]]:
    """
    Run the scenarios of issue 5 and print their tables.

    @return: Every run's result, or None if one failed.
    """
    began = time.monotonic()
    source = Source()
    scenarios = [_scenarios.build(k, args.scale) for k in keys]
    expected = {sc.key: expectedDigests(source, sc.images) for sc in scenarios}
    buffer = ReceiveBuffer(max(layoutSize(layout(sc.images)) for sc in scenarios))
    _log(f"content, digests and a {buffer.size / 2**20:.0f} MiB receive buffer ready in {time.monotonic() - began:.1f} s")
    results: list[RunResult] = []
    try:
        for run in range(1, args.runs + 1):
            # Alternate which system goes first, so neither always follows the other.
            order = systems if run % 2 else systems[::-1]
            for sc in scenarios:
                for system in order:
                    prefix = None
                    if args.profile:
                        os.makedirs(args.profile, exist_ok=True)
                        prefix = os.path.join(os.path.abspath(args.profile), f"{sc.key}-{system}-run{run}")
                    perfPrefix = None
                    if args.perf:
                        os.makedirs(args.perf, exist_ok=True)
                        perfPrefix = os.path.join(os.path.abspath(args.perf), f"{sc.key}-{system}-run{run}")
                    r = runOnce(system, sc, source, buffer, expected[sc.key], args.clients, prefix, perfPrefix)
                    results.append(r)
                    _log(
                        f"run {run}/{args.runs} {sc.key:<8} {system:<9} {r.seconds:7.3f} s "
                        f"{sc.totalBytes / r.seconds / 1e9:5.2f} GB/s  verified"
                    )
    except BenchmarkError as e:
        _log(f"FAILED: {e}")
        return None
    print(f"\nimgrelay benchmarks: {args.runs} runs, scale {args.scale}, clients in {args.clients}es, "
          f"{time.monotonic() - began:.0f} s in all; every byte of every run verified (BLAKE2b)")
    print(f"imgrelay: {_imgrelayVersion(args.imgrelay_path)}")
    for sc in scenarios:
        print(f"  {sc.key:<8} {sc.title} ({sc.totalBytes / 1e6:.1f} MB)")
    print()
    print(table(scenarios, results))
    print()
    print(details(scenarios, results))
    if "imgrelay" in systems:
        print("\nissue 5 targets (information, not tests):")
        print(targets(scenarios, results))
    if args.profile:
        print(f"\nwhere the time went (py-spy, own samples incl. idle; files in {args.profile}):")
        for name in sorted(os.listdir(args.profile)):
            if name.endswith(".txt"):
                print(_profile.summary(os.path.join(args.profile, name)))
    if args.perf:
        print(f"\nwhat the CPU time went to (perf, from the start of the measured part; files in {args.perf}):")
        for name in sorted(os.listdir(args.perf)):
            if name.endswith(".perf"):
                with open(os.path.join(args.perf, name.rsplit("-", 1)[0] + ".json")) as f:
                    window = json.load(f)
                print(_perf.summary(os.path.join(args.perf, name), window["since"], window["gib"]))
    return results


def _criuBenchmarks(args: argparse.Namespace, keys: list[str], systems: list[str]) -> Optional[list[_criu.CriuResult]]:
    """
    Run the real-CRIU cases (L{_criu}) and print their table, or say why
    they are skipped.

    @return: Every run's result (none if skipped), or None if one failed.
    """
    reason = _criu.unavailable(systems)
    if reason is not None:
        print(f"\nreal-CRIU cases ({','.join(keys)}) skipped: {reason}")
        return []
    began = time.monotonic()
    cases = _criu.cases(keys, args.scale)
    try:
        results = _criu.benchmark(cases, systems, args.runs, _log)
    except BenchmarkError as e:
        _log(f"FAILED: {e}")
        return None
    print(f"\nreal-CRIU downtime: {args.runs} runs, scale {args.scale}, {time.monotonic() - began:.0f} s in all; "
          f"every restored victim checked its own state (same digest as before the dump)")
    print(f"imgrelay: {_imgrelayVersion(args.imgrelay_path)}")
    print(_criu.HOW)
    print(_criu.table(cases, results))
    return results


def _netBenchmarks(args: argparse.Namespace, keys: list[str], systems: list[str]) -> Optional[list[_shaped.NetResult]]:
    """
    Run the shaped-link cases (L{_shaped}) and print their table, or say
    why some or all are skipped.

    @return: Every run's result (none if all skipped), or None if one failed.
    """
    chosen = [*(_shaped.MODES if "imgrelay" in systems else ()), *((_shaped.PIPELINE,) if "baseline" in systems else ())]
    skipped = _shaped.unavailable(keys, args.heap_pages)
    if not chosen:
        skipped = {k: "--system names neither imgrelay nor baseline" for k in keys}
    for key, reason in skipped.items():
        print(f"\nshaped-link case {key} skipped: {reason}")
    keys = [k for k in keys if k not in skipped]
    if not keys:
        return []
    began = time.monotonic()
    # A SIGTERM unwinds like Ctrl-C: namespaces, daemons, victims, directories go.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        results, rates = _shaped.benchmark(keys, chosen, args.runs, args.scale, args.heap_pages, _log)
    except BenchmarkError as e:
        _log(f"FAILED: {e}")
        return None
    finally:
        signal.signal(signal.SIGTERM, previous)
    titles = {k: t for k, t in (
        ("net-heap-criu", f"real CRIU, heap victim, {max(1000, round(_criu.HEAP_OBJECTS * args.scale))} Python objects"),
        ("net-heap-pages", f"{args.heap_pages} repeated to {max(1, round(_shaped.PAGES_MIB * args.scale))} MiB "
                           "as pages-1.img, then inventory.img"),
        ("net-random", f"{max(1, round(_shaped.PAGES_MIB * args.scale))} MiB of random bytes as pages-1.img, "
                       "then inventory.img"),
    ) if k in keys}
    print(f"\nshaped links: {args.runs} runs, scale {args.scale}, {time.monotonic() - began:.0f} s in all; every byte "
          "verified, every restored victim checked")
    print(f"imgrelay: {_imgrelayVersion(args.imgrelay_path)}")
    print(_shaped.HOW)
    print(_shaped.table(results, rates, titles))
    print("\ntargets (information, not tests):")
    print(_shaped.targets(results))
    return results


def main(argv: Optional[list[str]] = None) -> int:
    """
    Run the benchmarks and print the table.

    @return: The exit status: 0 when every run verified every byte.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="imgrelay's benchmarks (issue 5)")
    parser.add_argument("--runs", type=int, default=3, help="runs of every scenario (default 3)")
    parser.add_argument("--scenario", default=None, help=f"comma-separated, of {','.join(_scenarios.KEYS + _criu.KEYS + _shaped.KEYS)} (c = both c-*, criu = both criu-*: real CRIU, root only; net = all net-*: shaped links, root only); default all")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply image sizes and file counts (e.g. 0.1 for a quick run)")
    parser.add_argument("--clients", choices=["process", "thread"], default="process", help="run writer and reader as forked processes (default) or threads")
    parser.add_argument("--system", default="baseline,imgrelay", help="which systems to run, of imgrelay,baseline,naive (naive: the baseline storing in a new bytearray per piece); default baseline,imgrelay")
    parser.add_argument("--imgrelay-path", metavar="DIR", help="run the daemons from this checkout of imgrelay (put first on their PYTHONPATH) instead of the installed one")
    parser.add_argument("--profile", metavar="DIR", help="record the processes under test with py-spy into DIR and print where their time went (slows them: not for the table)")
    parser.add_argument("--perf", metavar="DIR", help="record the processes under test with Linux perf (kernel frames too: needs root) into DIR and print what their CPU time went to (slows them a little: not for the table)")
    parser.add_argument("--json", metavar="PATH", help="also write every run's raw measures here")
    parser.add_argument("--heap-pages", metavar="PATH", default=_shaped.HEAP_PAGES, help=f"real heap pages for net-heap-pages (default {_shaped.HEAP_PAGES})")
    args = parser.parse_args(argv)
    try:
        keys = _streamKeys(args.scenario)
    except KeyError as e:
        parser.error(f"unknown scenario {e}")
    criuKeys = _criu.selectKeys(args.scenario)
    netKeys = _shaped.selectKeys(args.scenario)
    systems = [s for s in args.system.split(",") if s]
    if not systems or any(s not in SYSTEMS for s in systems):
        parser.error(f"--system takes {','.join(SYSTEMS)}")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in [args.imgrelay_path, os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH")] if p
    )

    results: list[RunResult] = []
    if keys:
        ran = _streamBenchmarks(args, keys, systems)
        if ran is None:
            return 1
        results = ran
    criuResults: list[_criu.CriuResult] = []
    if criuKeys:
        ranCriu = _criuBenchmarks(args, criuKeys, systems)
        if ranCriu is None:
            return 1
        criuResults = ranCriu
    netResults: list[_shaped.NetResult] = []
    if netKeys:
        ranNet = _netBenchmarks(args, netKeys, systems)
        if ranNet is None:
            return 1
        netResults = ranNet
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asDict(r) for r in results] + [attrs.asdict(r) for r in criuResults]
                      + [attrs.asdict(r) for r in netResults], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
