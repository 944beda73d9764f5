"""complete -> completed for 1 GB studies of other shapes than the main bench's 256 x 4 MB:
many small instances (2,000 x 0.5 MB) and few large ones (10 x 100 MB).

Each shape is uploaded as the PWA uploads it (the manifest carries every file's SHA-256,
which processing checks), then compared with a direct one-batch-at-a-time STOW-RS of the
same files to an identical, fresh Orthanc, in rounds (RelayPACS, direct, direct,
RelayPACS), with the steps read from serve's log (``timeline.py``). Called by
``run_all.py``; alone: ``.venv/bin/python bench/forward_shapes.py [--quick]`` prints the
figures without recording them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import clients, servers, studies  # noqa: E402


@dataclass(frozen=True)
class Shape:
    """A study of ``instances`` files of about ``instance_bytes`` each."""

    label: str
    instances: int
    instance_bytes: int


# About 1 GB each, like the main bench's 256 x 4 MB study.
SHAPES = (
    Shape("2,000 x 0.5 MB", 2000, 512 * 1024),
    Shape("10 x 100 MB", 10, 100 * 1024 * 1024),
)
# --quick: the same shapes, small, to check the bench itself.
QUICK_SHAPES = (
    Shape("200 x 0.5 MB", 200, 512 * 1024),
    Shape("2 x 20 MB", 2, 20 * 1024 * 1024),
)
# Two rounds, in the order RelayPACS, direct, direct, RelayPACS: a drift cancels out.
ROUNDS = 2

Compare = Callable[..., Any]  # run_all._compare_forwarding


# --before: the main bench's shape too, so that a change is measured on all three.
MAIN_SHAPE = Shape("256 x 4 MB", studies.INSTANCES_1GB, studies.INSTANCE_BYTES)


def measure(
    root: Path,
    shapes: tuple[Shape, ...],
    compare: Compare,
    log: Callable[[str], None],
    *,
    codes: tuple[Path, ...] = (REPO,),
) -> dict[str, Any]:
    """One run of ``manage.py serve`` and two fresh Orthancs per source tree of ``codes``;
    for each shape, ROUNDS studies uploaded (with SHA-256, not timed) into each relay in
    turn and compared by ``compare``. Returns the Forwarding of each shape by its label
    (with the tree's name appended when there are several)."""
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        relays = []
        for number, code in enumerate(codes):
            pacs_relay = servers.start_orthanc(
                stack, root / f"orthanc-relay-{number}", name=f"BENCH_SHAPE_R{number}"
            )
            pacs_direct = servers.start_orthanc(
                stack, root / f"orthanc-direct-{number}", name=f"BENCH_SHAPE_D{number}"
            )
            relay = servers.start_relay(stack, root / f"relay-{number}", pacs_relay, code=code)
            client = clients.RelayClient(
                relay.base, relay.port, servers.BENCH_USERNAME, servers.BENCH_PASSWORD
            )
            relays.append((code, pacs_relay, pacs_direct, relay, client))
        for number, shape in enumerate(shapes):
            log(f"forwarding shape {shape.label}: writing {ROUNDS} studies")
            made = [
                studies.make_study(
                    root / f"shape-{number}-{n}",
                    instances=shape.instances,
                    instance_bytes=shape.instance_bytes,
                )
                for n in range(ROUNDS)
            ]
            # Each relay has its own pair of Orthancs, so the same studies serve every relay.
            for code, pacs_relay, pacs_direct, relay, client in relays:
                label = f"{shape.label} ({code})" if len(codes) > 1 else shape.label
                log(f"forwarding shape {label}: uploading, then RelayPACS and direct in turn")
                work = []
                for study in made:
                    upload = client.init(study.paths, sha256=True)
                    client.send_chunks(upload, study.paths)
                    work.append((study, upload))
                results[f"{label}, {made[0].size / 1e9:.2f} GB"] = compare(
                    client, relay, pacs_relay, pacs_direct, work, _no_phase
                )
            for study in made:
                shutil.rmtree(study.paths[0].parent, ignore_errors=True)
    return results


def _no_phase() -> AbstractContextManager[None]:
    return nullcontext()


def main(argv: list[str] | None = None) -> int:
    """Measure the shapes and print the ratios (nothing recorded)."""
    from bench import run_all

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small studies: checks the bench")
    parser.add_argument(
        "--before",
        type=Path,
        help="another copy of the source tree (e.g. without a change): both are measured, "
        "shape by shape in turn, the main bench's shape too",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="measure only the shapes whose label starts with this (repeatable), e.g. 2,000",
    )
    args = parser.parse_args(argv)
    shapes: tuple[Shape, ...] = QUICK_SHAPES if args.quick else SHAPES
    codes: tuple[Path, ...] = (REPO,)
    if args.before:
        codes = (args.before.resolve(), REPO)
        shapes = (*shapes, MAIN_SHAPE) if not args.quick else shapes
    if args.only:
        shapes = tuple(s for s in shapes if any(s.label.startswith(o) for o in args.only))
    with tempfile.TemporaryDirectory(prefix="relaypacs-shapes-", dir="/tmp") as tmp:
        results = measure(Path(tmp), shapes, run_all._compare_forwarding, run_all.log, codes=codes)
    print("\n".join(run_all._shapes_lines(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
