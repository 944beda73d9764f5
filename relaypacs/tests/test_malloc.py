"""relaypacs.malloc: a web process keeps freed chunk memory mapped (measured in a child
process, whose page faults are its own)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from relaypacs.malloc import MMAP_THRESHOLD_MAX

GLIBC_ONLY = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

# A web process's work per chunk, as far as memory goes: a buffer of the chunk's size and
# the socket reads that fill it, freed when the chunk is stored.
CHILD = textwrap.dedent(
    """
    import json, resource, sys
    sys.path.insert(0, {repo!r})
    tuned = False
    if sys.argv[1] == "asgi":  # the web process's module, under the settings it is given
        import relaypacs.asgi  # noqa: F401
        tuned = None
    if sys.argv[1] == "tuned":
        from relaypacs.malloc import malloc_keep_freed_memory
        tuned = malloc_keep_freed_memory(largest_block=int(sys.argv[2]), keep=64 * 1024 * 1024)
    def chunk():
        pieces = [bytes(256 * 1024) for _ in range(4)]
        buffer = bytearray(1024 * 1024)
        for n, piece in enumerate(pieces):
            buffer[n * len(piece):(n + 1) * len(piece)] = piece
        return len(buffer)
    for _ in range(20):
        chunk()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(200):
        chunk()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({{"tuned": tuned, "faults_per_chunk": faults / 200}}))
    """
)


def _child(
    mode: str, largest_block: int = 16 * 1024 * 1024, env: dict[str, str] | None = None
) -> dict[str, float]:
    from django.conf import settings

    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(repo=str(settings.BASE_DIR)), mode, str(largest_block)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    return dict(json.loads(result.stdout))


@GLIBC_ONLY
def test_chunk_sized_memory_stays_mapped_from_one_chunk_to_the_next() -> None:
    default = _child("default")
    tuned = _child("tuned")
    assert tuned["tuned"] is True
    # glibc's defaults map and unmap (or trim) a megabyte's pages for every chunk: one
    # fault per 4 KiB page touched anew (about 256 a chunk); tuned, nearly none.
    assert default["faults_per_chunk"] > 100, default
    assert tuned["faults_per_chunk"] < 5, tuned


@GLIBC_ONLY
def test_a_block_above_what_glibc_accepts_is_capped_not_refused() -> None:
    # glibc refuses an mmap threshold above 32 MiB: capped there, still tuned.
    assert MMAP_THRESHOLD_MAX == 32 * 1024 * 1024
    assert _child("tuned", largest_block=1 << 30)["tuned"] is True


def test_the_web_process_is_tuned_outside_tests_only() -> None:
    from django.conf import settings

    from relaypacs.settings import base

    # On in every deployed settings module (they start from base); off here, where
    # processes that import relaypacs.asgi measure glibc's defaults.
    assert base.WEB_MALLOC_TUNING is True
    assert settings.WEB_MALLOC_TUNING is False


@GLIBC_ONLY
def test_relaypacs_asgi_tunes_the_process_under_deployed_settings_only(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    base["DATA_DIR"] = str(tmp_path)
    dev = _child("asgi", env={**base, "DJANGO_SETTINGS_MODULE": "relaypacs.settings.dev"})
    test = _child("asgi", env={**base, "DJANGO_SETTINGS_MODULE": "relaypacs.settings.test"})
    assert dev["faults_per_chunk"] < 5, dev
    assert test["faults_per_chunk"] > 100, test
