"""A minimal RAR 5 writer for tests: stored (uncompressed) entries only.

No free tool creates RAR archives, so tests that send DICOM inside a RAR build one here,
following RARLAB's published RAR 5.0 format description (vint sizes, CRC32 per header).
"""

from __future__ import annotations

import zlib
from pathlib import Path

SIGNATURE = b"Rar!\x1a\x07\x01\x00"
UNIX_FILE_MODE = 0o100644
HOST_UNIX = 1


def _vint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _header(body: bytes) -> bytes:
    """Header size + body, prefixed by the CRC32 of both."""
    data = _vint(len(body)) + body
    return zlib.crc32(data).to_bytes(4, "little") + data


def rar5_stored(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    """Write a RAR 5 archive of ``entries`` (name, bytes), stored without compression."""
    parts = [SIGNATURE, _header(_vint(1) + _vint(0) + _vint(0))]  # main archive header
    for name, data in entries:
        encoded = name.encode()
        body = (
            _vint(2)  # file header
            + _vint(0x0002)  # header flags: a data area follows
            + _vint(len(data))
            + _vint(0x0004)  # file flags: data CRC32 present
            + _vint(len(data))  # unpacked size
            + _vint(UNIX_FILE_MODE)
            + zlib.crc32(data).to_bytes(4, "little")
            + _vint(0)  # compression: version 0, not solid, method 0 (store)
            + _vint(HOST_UNIX)
            + _vint(len(encoded))
            + encoded
        )
        parts += [_header(body), data]
    parts.append(_header(_vint(5) + _vint(0) + _vint(0)))  # end of archive
    path.write_bytes(b"".join(parts))
    return path
