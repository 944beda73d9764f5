"""Keep the memory of received chunks in the web process instead of handing it back to the
kernel after every chunk (glibc's malloc).

A chunk is about a megabyte: its body buffer and the socket reads that fill it. With glibc's
default thresholds that memory is mapped for the request and unmapped after it (or trimmed
from the heap's top), so every chunk faults its pages in anew: about 220 page faults per
1 MiB chunk, measured at 0.3-0.6 ms of kernel CPU per chunk on the 2-core reference machine
(bench/RESULTS.md, "Ingest: where a chunk's CPU goes now, and the page faults"). Raising the
mmap threshold above the largest chunk and the trim threshold above what the chunks in
flight hold keeps those pages mapped for the next chunk; the process's peak memory is
unchanged (the chunk memory budget, ``uploads.chunk_memory``, bounds it), it only stays at
that peak instead of falling back between chunks.

Freed chunk memory is kept, not cleared: like any buffer it holds study bytes (patient data)
until reused, so core dumps stay off where RelayPACS runs (docker-compose.yml sets
``ulimits: core: 0``; docs/deployment.md).

Only where glibc's ``mallopt`` exists (Linux with glibc, as the Dockerfile's image); a
no-op elsewhere.
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger(__name__)

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc accepts an mmap threshold up to 32 MiB on 64-bit systems (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
# Freed memory a web process keeps at its heap's top: the chunks of a few dozen requests.
KEEP_FREED_BYTES = 64 * 1024 * 1024


def malloc_keep_freed_memory(*, largest_block: int, keep: int) -> bool:
    """Serve blocks up to ``largest_block`` bytes from the heap and keep up to ``keep``
    freed bytes at its top; whether glibc took both settings."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_threshold = min(max(largest_block + 1, 128 * 1024), MMAP_THRESHOLD_MAX)
    took = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(M_TRIM_THRESHOLD, max(keep, mmap_threshold))
    )
    if not took:
        logger.warning("malloc_tuning_refused", extra={"mmap_threshold": mmap_threshold})
    return took
