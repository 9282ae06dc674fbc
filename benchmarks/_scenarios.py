"""
The scenarios of issue 5: what the dump writes, in which order and overlap,
and what the restore asks for.
"""

from __future__ import annotations

import os
import random
import re
from typing import Optional, Union

import attrs

from benchmarks._content import BLOCK, ImageSpec
from imgrelay.testing import traces

GiB = 1 << 30
MiB = 1 << 20


@attrs.frozen
class Open:
    """Ask for an image and get its pipe (CRIU's dump opens it)."""

    name: str


@attrs.frozen
class Write:
    """Write the image's bytes C{[lo, hi)} into its open pipe."""

    name: str
    lo: int
    hi: int


@attrs.frozen
class Close:
    """Close the image's pipe: its end."""

    name: str


@attrs.frozen
class Together:
    """Open all these images, write them all at once (non-blocking, as each
    pipe has room), and close each when done."""

    names: tuple[str, ...]


@attrs.frozen
class Eof:
    """Close the dump's socket: the dump ends."""


Step = Union[Open, Write, Close, Together, Eof]


@attrs.frozen
class Scenario:
    """
    One benchmark scenario.

    @ivar key: Its short name, as C{--scenario} takes it.
    @ivar title: What it is.
    @ivar images: Everything the dump writes.
    @ivar dump: The writer's steps.
    @ivar restore: The reader's requests in order: (name, whether it exists).
    @ivar overlap: Whether the restore waits from the start (True) or
        starts once the dump finished (False).
    @ivar countFiles: Whether files per second are reported.
    """

    key: str
    title: str
    images: tuple[ImageSpec, ...]
    dump: tuple[Step, ...]
    restore: tuple[tuple[str, bool], ...]
    overlap: bool
    countFiles: bool = False

    @property
    def totalBytes(self) -> int:
        """The bytes the dump writes (and the restore reads)."""
        return sum(spec.size for spec in self.images)


def _mib(size: float) -> int:
    """A size scaled down, whole MiB, at least 1 MiB."""
    return max(BLOCK, int(size) // BLOCK * BLOCK)


def _count(n: int, scale: float, least: int) -> int:
    return max(least, round(n * scale))


def _whole(spec: ImageSpec) -> list[Step]:
    return [Open(spec.name), Write(spec.name, 0, spec.size), Close(spec.name)]


def oneImage(key: str, scale: float, overlap: bool) -> Scenario:
    """
    (a) and (b): one 1 GiB pages image.
    """
    spec = ImageSpec("pages-1.img", _mib(GiB * scale), 1)
    when = "restore waiting from the start" if overlap else "restore after the dump finished"
    return Scenario(key, f"1 image of {spec.size // MiB} MiB, {when}", (spec,), (*_whole(spec), Eof()), ((spec.name, True),), overlap)


def _smallFiles(n: int, seed: int, first: int = 1, prefix: str = "file") -> list[ImageSpec]:
    rng = random.Random(seed)
    return [ImageSpec(f"{prefix}-{i:05d}.img", rng.randint(100, 4096), first + i) for i in range(n)]


def smallFiles(scale: float) -> Scenario:
    """
    (c), first half: 3000 files of 100 B to 4 KiB, written one after the
    other, each read as soon as it is there.
    """
    images = _smallFiles(_count(3000, scale, 20), 3)
    dump: list[Step] = [s for spec in images for s in _whole(spec)]
    return Scenario(
        "c-small", f"{len(images)} files of 100 B..4 KiB, restore waiting", tuple(images), (*dump, Eof()),
        tuple((spec.name, True) for spec in images), True, True,
    )


_PERPROC = re.compile(r"^(ids|core|mm|fs|pagemap)-(\d+)\.img$")
_NUMBERED = re.compile(r"^(fdinfo|pages)-(\d+)\.img$")


def _traceImages() -> dict[str, bytes]:
    directory = os.path.join(traces.traceDir(), "images")
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def traceScaled(scale: float) -> Scenario:
    """
    (c), second half: the bundled CRIU 4.2 dump (a shell and two children)
    scaled to 100 processes.

    The dump trace is a prologue (C{seccomp}, C{files}), one block of events
    per process (C{ids}, C{fdinfo}, C{pagemap}, C{pages}, C{core}, C{mm},
    C{fs}) and an epilogue (C{pstree}, C{timens}, C{inventory}, the closes,
    the socket's end). Process I{j} replays the block of recorded process
    I{j mod 3} with its pid renamed to 30000+j, C{pages-(j+1)} and
    C{fdinfo-(j+2)}; each open writes half the image, its close the rest,
    exactly as L{traces.replayDump}. Real image files are sent as they are,
    pages as generated content of the recorded size.

    The restore asks in the recorded order, generalized: C{inventory},
    C{pstree}, every C{ids}, the shared and absent images as recorded, the
    root's C{core}, then C{mm}/C{fdinfo}/C{fs} of every process, the root's
    C{pagemap} and C{pages}, every other C{core}, every other C{pagemap} and
    C{pages}. Absent images are asked for as CRIU does.
    """
    n = _count(100, scale, 3)
    events = traces.loadTrace("dump-stream.json")["events"]
    real = _traceImages()
    sizes = {e["name"]: e["size"] for e in events if e["op"] == "close"}
    starts = [i for i, e in enumerate(events) if e["op"] == "open" and e["name"].startswith("ids-")]
    epilogue = next(i for i, e in enumerate(events) if e["op"] == "open" and e["name"] == "pstree.img")
    bounds = starts + [epilogue]
    blocks = [events[bounds[k] : bounds[k + 1]] for k in range(len(starts))]
    templatePids = [int(_PERPROC.match(b[0]["name"]).group(2)) for b in blocks]  # type: ignore[union-attr]

    def rename(name: str, j: int) -> str:
        m = _PERPROC.match(name)
        if m:
            return f"{m.group(1)}-{30000 + j}.img"
        m = _NUMBERED.match(name)
        if m:
            return f"{m.group(1)}-{j + (1 if m.group(1) == 'pages' else 2)}.img"
        raise ValueError(f"unexpected per-process image {name}")

    images: dict[str, ImageSpec] = {}

    def spec(name: str, template: str) -> ImageSpec:
        if name not in images:
            images[name] = ImageSpec(name, sizes[template], len(images) + 1, real.get(template))
        return images[name]

    dump: list[Step] = []

    def replay(event: dict, name: str) -> None:
        if event["op"] == "open":
            s = spec(name, event["name"])
            dump.extend([Open(name), Write(name, 0, s.size // 2)])
        elif event["op"] == "close":
            s = images[name]
            dump.extend([Write(name, s.size // 2, s.size), Close(name)])
        elif event["op"] == "socket-eof":
            dump.append(Eof())

    for e in events[: starts[0]]:
        replay(e, e["name"])
    for j in range(n):
        for e in blocks[j % len(blocks)]:
            replay(e, rename(e["name"], j))
    for e in events[epilogue:]:
        replay(e, e.get("name", ""))

    def proc(kind: str, j: int) -> list[tuple[str, bool]]:
        if kind in ("fdinfo", "pages"):
            return [(f"{kind}-{j + (1 if kind == 'pages' else 2)}.img", True)]
        return [(f"{kind}-{30000 + j}.img", True)]

    restore: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for request in traces.loadTrace("restore-stream.json")["requests"]:
        if "name" not in request:
            continue
        name, exists = request["name"], request["exists"]
        m = _PERPROC.match(name) or _NUMBERED.match(name)
        if not m or (m.group(1) in ("ids", "core", "mm", "fs", "pagemap") and int(m.group(2)) not in templatePids):
            restore.append((name, exists))
            continue
        kind = m.group(1)
        if kind in seen or kind in ("fdinfo", "fs", "pages"):
            continue
        seen.add(kind)
        if kind == "ids":
            restore += [r for j in range(n) for r in proc("ids", j)]
        elif kind == "mm":
            restore += [r for j in range(n) for k in ("mm", "fdinfo", "fs") for r in proc(k, j)]
        elif kind == "core":
            restore += proc("core", 0)
        elif kind == "pagemap":
            restore += proc("pagemap", 0) + proc("pages", 0)
            restore += [r for j in range(1, n) for r in proc("core", j)]
            restore += [r for j in range(1, n) for k in ("pagemap", "pages") for r in proc(k, j)]
    assert sorted(name for name, exists in restore if exists) == sorted(images), "restore misses images"
    return Scenario(
        "c-trace", f"CRIU 4.2 trace scaled to {n} processes ({len(images)} images), restore waiting",
        tuple(images.values()), tuple(dump), tuple(restore), True, True,
    )


def concurrent(scale: float) -> Scenario:
    """
    (d): 8 images of 128 MiB, their 8 pipes open at once and written as
    each has room; the restore waits from the start and reads all 8.
    """
    images = tuple(ImageSpec(f"pages-{i}.img", _mib(128 * MiB * scale), i) for i in range(1, 9))
    return Scenario(
        "d", f"8 images of {images[0].size // MiB} MiB written concurrently, restore waiting", images,
        (Together(tuple(s.name for s in images)), Eof()), tuple((s.name, True) for s in images), True,
    )


def mix(scale: float) -> Scenario:
    """
    (e): the real-world mix, 300 small files and one 2 GiB pages image.

    As in a real dump, C{inventory.img} is written last and the restore asks
    for it first, so the restore (waiting from the start) gets going only
    once the dump ends; then it reads the small files and the pages.
    """
    small = _smallFiles(_count(300, scale, 10) - 1, 7)
    pages = ImageSpec("pages-1.img", _mib(2 * GiB * scale), len(small) + 1)
    inventory = ImageSpec("inventory.img", 86, len(small) + 2)
    half = len(small) // 2
    order = [*small[:half], pages, *small[half:], inventory]
    dump: list[Step] = [s for spec in order for s in _whole(spec)]
    restore = [(inventory.name, True)] + [(s.name, True) for s in small] + [(pages.name, True)]
    return Scenario(
        "e", f"{len(small) + 1} small files and 1 image of {pages.size // MiB} MiB, restore waiting",
        tuple(order), (*dump, Eof()), tuple(restore), True,
    )


#: Every scenario key, in the order they run.
KEYS = ("a", "b", "c-small", "c-trace", "d", "e")


def build(key: str, scale: float) -> Scenario:
    """
    @param key: One of L{KEYS} (C{c} means both halves of (c)).
    @param scale: Sizes and counts are multiplied by it.
    @raise KeyError: For an unknown key.
    """
    makers = {
        "a": lambda: oneImage("a", scale, False),
        "b": lambda: oneImage("b", scale, True),
        "c-small": lambda: smallFiles(scale),
        "c-trace": lambda: traceScaled(scale),
        "d": lambda: concurrent(scale),
        "e": lambda: mix(scale),
    }
    return _endedByInventory(makers[key]())


#: CRIU's inventory image: a dump writes it last, and only when it succeeded
#: (imgrelay's proxy gives up a dump stream without it).
INVENTORY = "inventory.img"


def _endedByInventory(scenario: Scenario) -> Scenario:
    """
    @return: C{scenario} as a CRIU dump ends: its last image, written after
        all the others, is a small C{inventory.img} (a trace has one
        already), which the restore asks for like every other.
    """
    if any(spec.name == INVENTORY for spec in scenario.images):
        return scenario
    spec = ImageSpec(INVENTORY, 64, max(s.index for s in scenario.images) + 1)
    *steps, eof = scenario.dump
    return attrs.evolve(
        scenario,
        images=(*scenario.images, spec),
        dump=(*steps, *_whole(spec), eof),
        restore=(*scenario.restore, (INVENTORY, True)),
    )


def select(spec: Optional[str]) -> list[str]:
    """
    @param spec: C{--scenario}'s value: keys separated by commas; C{c}
        stands for C{c-small,c-trace}; None for all.
    @return: The keys to run, in L{KEYS} order.
    @raise KeyError: For an unknown key.
    """
    if not spec:
        return list(KEYS)
    wanted: set[str] = set()
    for part in (p.strip() for p in spec.split(",")):
        if part == "c":
            wanted |= {"c-small", "c-trace"}
        elif part in KEYS:
            wanted.add(part)
        elif part:
            raise KeyError(part)
    return [k for k in KEYS if k in wanted]
