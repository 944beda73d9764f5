"""The read-only, seekable raw stream that every byte reader of the storage (and of the
report store) builds on: a position over ``size`` bytes; subclasses give ``readinto``.
And what both backends are told of a stored chunk when asked whether it is still there."""

from __future__ import annotations

import io
from typing import NamedTuple


class StoredChunk(NamedTuple):
    """A chunk as its row recorded it when it was stored: its length and the hex MD5 of
    its bytes."""

    size: int
    md5: str


class SeekableRaw(io.RawIOBase):
    """Position bookkeeping of a read-only window of ``_size`` bytes (set by subclasses):
    seeking never fails and never goes below 0; reading past the end is the subclass's."""

    _size = 0
    _pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos
