"""The embedded broker: kombu's filesystem transport, with messages that appear whole.

kombu's filesystem transport creates a message file under its final name and then writes
it, so a worker polling the folder can take a file another process is still writing and
die on half a JSON document (``JSONDecodeError`` in ``drain_events``, seen in a clean-clone
run: the worker's supervisor restarted it, but the taken message, an upload's processing,
was gone until beat queued it again minutes later). Here:

- a message is written under a name no reader looks at (``.incoming/``, in the same
  folder so the rename is atomic) and renamed into place once written and flushed;
- a reader claims a message by renaming it into ``.claimed/`` in the same folder (one
  reader wins; kombu moves it to the system's temporary folder, which can be another file
  system and copies it there), reads it, deletes it;
- a message that still does not parse (a file left by an older version, a disk error) is
  moved aside to ``.unreadable/`` with one log line and the worker goes on;
- the exchange table (broadcasts such as ``celery inspect``) is replaced by a rename too,
  never truncated in place under a reader.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

INCOMING = ".incoming"
CLAIMED = ".claimed"
UNREADABLE = ".unreadable"


def _write_atomically(*, path: Path, data: bytes, scratch: Path) -> None:
    """Write ``data`` to ``path`` so that a reader sees either nothing or all of it."""
    scratch.mkdir(parents=True, exist_ok=True)
    partial = scratch / f"{uuid.uuid4().hex}.part"
    try:
        with open(partial, "wb", buffering=0) as f:
            f.write(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


class Channel(filesystem.Channel):
    """kombu's filesystem channel with atomic message files (see the module's text)."""

    def _put(self, queue: Any, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        folder = Path(self.data_folder_out)
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        try:
            _write_atomically(
                path=folder / name,
                data=str_to_bytes(dumps(message)),
                scratch=folder / INCOMING,
            )
        except OSError as exc:
            raise ChannelError(f"Cannot add file {name!r} to directory") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        folder = Path(self.data_folder_in)
        wanted = f"{queue}.msg"
        claimed = folder / CLAIMED
        claimed.mkdir(exist_ok=True)
        for name in sorted(os.listdir(folder)):
            if name.partition(".")[2] != wanted:
                continue
            mine = claimed / f"{uuid.uuid4().hex}-{name}"
            try:
                os.rename(folder / name, mine)
            except FileNotFoundError:
                continue  # another worker took it first
            except OSError as exc:
                raise ChannelError(f"Cannot take {name!r} from the broker folder.") from exc
            try:
                raw = mine.read_bytes()
            except OSError as exc:
                raise ChannelError(f"Cannot read {name!r} from the broker folder.") from exc
            try:
                message = loads(bytes_to_str(raw))
            except ValueError:
                aside = folder / UNREADABLE
                aside.mkdir(exist_ok=True)
                os.replace(mine, aside / name)
                logger.error(
                    "embedded broker: message %s is not readable (%d bytes); moved to %s",
                    name,
                    len(raw),
                    aside,
                )
                continue
            mine.unlink(missing_ok=True)
            return message
        raise Empty()

    def get_table(self, exchange: str) -> list[Any]:
        file = self._exchange_file(exchange)
        try:
            raw = file.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc
        return [filesystem.exchange_queue_t(*q) for q in loads(bytes_to_str(raw))]

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        self.control_folder.mkdir(exist_ok=True)
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._table_rewrite(exchange, lambda queues: None if entry in queues else [entry, *queues])

    def _delete(
        self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any, **kwargs: Any
    ) -> None:
        # Skip filesystem.Channel._delete (it rewrites the table in place): the virtual
        # channel's part, then the table without this queue, replaced whole.
        super(filesystem.Channel, self)._delete(
            queue, exchange, routing_key, pattern, *args, **kwargs
        )
        if not self._exchange_file(exchange).exists():
            return
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._table_rewrite(exchange, lambda queues: [q for q in queues if q != entry])

    def _table_rewrite(
        self, exchange: str, change: Callable[[list[Any]], list[Any] | None]
    ) -> None:
        """Replace the exchange's table by ``change(table)`` (None: leave it). Writers
        serialise on a lock file beside the table; readers never lock: the table they
        read is always a whole one, replaced by rename."""
        file = self._exchange_file(exchange)
        with open(self.control_folder / f".{file.name}.lock", "ab") as lock_file:
            filesystem.lock(lock_file, filesystem.LOCK_EX)
            try:
                queues = change(self.get_table(exchange))
                if queues is not None:
                    _write_atomically(
                        path=file,
                        data=str_to_bytes(dumps(queues)),
                        scratch=self.control_folder / INCOMING,
                    )
            except OSError as exc:
                raise ChannelError(f"Cannot open {file}") from exc
            finally:
                filesystem.unlock(lock_file)


class Transport(filesystem.Transport):
    Channel = Channel
