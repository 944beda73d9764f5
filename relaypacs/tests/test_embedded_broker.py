"""The embedded broker (relaypacs/embedded_broker.py): a consumer never takes a message
that is still being written, every message is taken exactly once by one of several
consumers, and a file that does not parse is set aside instead of killing the worker."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from queue import Empty

import pytest
from kombu import Connection
from kombu.transport import filesystem

from relaypacs import embedded_broker

REPO = Path(__file__).resolve().parents[2]
TRANSPORT = "relaypacs.embedded_broker:Transport"
# Large enough that writing one takes several write() calls' worth of time for a reader
# polling the folder without pause (kombu's own transport fails this within seconds).
PAYLOAD_BYTES = 512 * 1024
MESSAGES_PER_WRITER = 60
WRITERS = 3
READERS = 2


# kombu keeps queue bindings per process (Transport.global_state), across connections: a
# queue bound for one test's folder would not be bound again for the next test's folder.
# Each test uses its own queue name.


def _connection(folder: Path, transport: object = TRANSPORT) -> Connection:
    return Connection(
        "filesystem://",
        transport=transport,
        transport_options={
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        },
    )


def _write(folder: str, writer: int) -> None:
    with _connection(Path(folder)) as conn:
        queue = conn.SimpleQueue("work")
        for n in range(MESSAGES_PER_WRITER):
            queue.put({"id": f"{writer}-{n}", "fill": "x" * PAYLOAD_BYTES})
        queue.close()


def _read(folder: str, expected: int, results: multiprocessing.Queue) -> None:
    seen: list[str] = []
    errors: list[str] = []
    with _connection(Path(folder)) as conn:
        queue = conn.SimpleQueue("work")
        idle = 0
        while idle < 30:
            try:
                message = queue.get(block=True, timeout=0.2)
            except Empty:
                idle += 1
                continue
            except Exception as exc:  # the failure this module exists to prevent
                errors.append(f"{type(exc).__name__}: {exc}")
                break
            idle = 0
            body = message.payload
            if len(body["fill"]) != PAYLOAD_BYTES:
                errors.append(f"short message {body['id']}")
            seen.append(body["id"])
            message.ack()
        queue.close()
    results.put((seen, errors))


def test_readers_polling_while_writers_write_take_every_message_whole_exactly_once(
    tmp_path: Path,
) -> None:
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()
    total = WRITERS * MESSAGES_PER_WRITER
    readers = [
        context.Process(target=_read, args=(str(tmp_path), total, results)) for _ in range(READERS)
    ]
    writers = [context.Process(target=_write, args=(str(tmp_path), w)) for w in range(WRITERS)]
    for process in readers + writers:
        process.start()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    outcomes = [results.get(timeout=120) for _ in readers]
    for process in readers:
        process.join(30)
    errors = [e for _, errs in outcomes for e in errs]
    seen = [i for ids, _ in outcomes for i in ids]
    assert errors == []
    assert sorted(seen) == sorted(
        f"{w}-{n}" for w in range(WRITERS) for n in range(MESSAGES_PER_WRITER)
    )
    assert len(seen) == len(set(seen)) == total
    # Nothing left behind: no scratch, claimed or unreadable files, no message.
    left = [p for p in tmp_path.rglob("*") if p.is_file() and "control" not in p.parts]
    assert left == []


def test_a_message_file_still_being_written_is_not_taken(tmp_path: Path) -> None:
    with _connection(tmp_path) as conn:
        queue = conn.SimpleQueue("partial")
        # What a writer has so far: the scratch file, under a name no reader looks at.
        scratch = tmp_path / embedded_broker.INCOMING
        scratch.mkdir()
        (scratch / "0001.part").write_bytes(b'{"body": "half')
        with pytest.raises(Empty):
            queue.get(block=False)
        queue.put({"id": "whole"})
        assert queue.get(block=False).payload == {"id": "whole"}
        queue.close()


def test_an_unreadable_message_is_set_aside_and_the_next_one_is_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _connection(tmp_path) as conn:
        queue = conn.SimpleQueue("aside")
        # A file an older version (kombu's own transport) left half written, named to
        # sort before the next message.
        (tmp_path / "0_00000000-0000-0000-0000-000000000000.aside.msg").write_bytes(b'{"bo')
        queue.put({"id": "next"})
        assert queue.get(block=False).payload == {"id": "next"}
        queue.close()
    aside = list((tmp_path / embedded_broker.UNREADABLE).iterdir())
    assert [p.name for p in aside] == ["0_00000000-0000-0000-0000-000000000000.aside.msg"]
    assert "is not readable (4 bytes)" in caplog.text


def test_kombus_own_transport_would_crash_on_that_file(tmp_path: Path) -> None:
    """The defect being fixed, shown on kombu's transport: the same half-written file
    raises out of get(), which in a worker is drain_events' unrecoverable error."""
    with _connection(tmp_path, transport=filesystem.Transport) as conn:
        queue = conn.SimpleQueue("kombu")
        (tmp_path / "0_00000000-0000-0000-0000-000000000000.kombu.msg").write_bytes(b'{"bo')
        with pytest.raises(ValueError):
            queue.get(block=False)
        queue.close()


def test_bindings_survive_concurrent_binds_and_deletes(tmp_path: Path) -> None:
    with _connection(tmp_path) as conn:
        channel = conn.channel()
        for n in range(20):
            channel._queue_bind("broadcast", f"key{n}", "", f"q{n}")
        channel._queue_bind("broadcast", "key3", "", "q3")  # again: not doubled
        table = channel.get_table("broadcast")
        assert len(table) == 20
        channel._delete("q3", "broadcast", "key3", "")
        assert {q.queue for q in channel.get_table("broadcast")} == {
            f"q{n}" for n in range(20) if n != 3
        }
        channel.close()


def test_the_product_uses_this_transport_when_no_broker_server_is_configured(
    tmp_path: Path,
) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL"}
    }
    env.update(DJANGO_SETTINGS_MODULE="relaypacs.settings.dev", DATA_DIR=str(tmp_path))
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from relaypacs.celery import app; "
            "c = app.connection_for_write(); print(type(c.transport).__module__)",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "relaypacs.embedded_broker"
