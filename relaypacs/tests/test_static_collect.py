"""``static_collect_if_changed``: real collectstatic into a temporary STATIC_ROOT, from a
tiny source folder (one finder), so that each collection takes milliseconds."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from relaypacs import static_collect
from relaypacs.static_collect import FINGERPRINT_FILE, LOCK_FILE, static_collect_if_changed

PLAIN_STORAGE = "django.contrib.staticfiles.storage.StaticFilesStorage"
PRODUCT_STORAGE = "whitenoise.storage.CompressedStaticFilesStorage"
SOURCES = {
    "app/site.css": "body { color: #123456; }\n" * 40,
    "app/site.js": "console.log('relaypacs');\n" * 40,
    "app/site.js.map": "{}\n",
}
NOT_SERVED = ["*.map"]


class Killed(BaseException):
    """What a kill mid-collection looks like to the code around it: nothing after runs."""


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    for name, text in SOURCES.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    return source


@pytest.fixture
def static_root(settings: Any, tmp_path: Path, source_dir: Path) -> Path:
    root = tmp_path / "staticfiles"
    settings.STATIC_ROOT = root
    settings.STATICFILES_DIRS = [source_dir]
    settings.STATICFILES_FINDERS = ["django.contrib.staticfiles.finders.FileSystemFinder"]
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": PLAIN_STORAGE}}
    return root


@pytest.fixture
def collections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Each collectstatic the module runs (the real one, recorded)."""
    calls: list[tuple[Any, ...]] = []

    def recorded(*args: Any, **options: Any) -> None:
        calls.append(args)
        call_command(*args, **options)

    monkeypatch.setattr(static_collect, "call_command", recorded)
    return calls


def collect() -> bool:
    return static_collect_if_changed(ignore_patterns=NOT_SERVED)


def collected(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in {FINGERPRINT_FILE, LOCK_FILE}
    }


def test_first_start_collects_and_a_matching_marker_skips(static_root, collections):
    assert collect() is True
    assert collected(static_root) == {k: v for k, v in SOURCES.items() if not k.endswith(".map")}
    assert (static_root / FINGERPRINT_FILE).read_text().strip()

    assert collect() is False
    assert len(collections) == 1


def test_a_modified_source_is_collected_again(static_root, source_dir, collections):
    assert collect() is True
    changed = source_dir / "app" / "site.css"
    changed.write_text("body { color: red; }\n")
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))

    assert collect() is True
    assert (static_root / "app" / "site.css").read_text() == "body { color: red; }\n"
    assert len(collections) == 2


def test_a_touched_or_added_source_is_collected_again(static_root, source_dir, collections):
    assert collect() is True
    touched = source_dir / "app" / "site.js"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert collect() is True
    (source_dir / "app" / "new.css").write_text("p {}\n")
    assert collect() is True
    assert (static_root / "app" / "new.css").read_text() == "p {}\n"
    assert collect() is False
    assert len(collections) == 3


def test_an_emptied_static_root_whose_marker_is_left_collects_again(static_root, collections):
    assert collect() is True
    for path in (static_root / "app").iterdir():  # what `rm -rf staticfiles/*` leaves
        path.unlink()
    (static_root / "app").rmdir()
    assert (static_root / FINGERPRINT_FILE).exists()

    assert collect() is True
    assert collected(static_root) == {k: v for k, v in SOURCES.items() if not k.endswith(".map")}
    assert len(collections) == 2


def test_a_collected_file_left_short_is_collected_again(static_root, collections):
    assert collect() is True
    # What a power cut after the marker was written can leave: the file newer than its
    # source (collectstatic alone would keep it) and shorter.
    (static_root / "app" / "site.css").write_text("body {")

    assert collect() is True
    assert (static_root / "app" / "site.css").read_text() == SOURCES["app/site.css"]


def test_a_collection_killed_after_the_marker_was_removed_collects_on_the_next_start(
    static_root, source_dir, monkeypatch
):
    assert collect() is True
    changed = source_dir / "app" / "site.css"
    # Within the second of the kill: collectstatic alone would keep the short file, which
    # is not older than its source at its one-second precision.
    changed.write_text("body { color: blue; }\n" * 40)
    seen_marker: list[bool] = []

    def killed_while_copying(*args: Any, **options: Any) -> None:
        seen_marker.append((static_root / FINGERPRINT_FILE).exists())
        call_command(*args, **options)
        (static_root / "app" / "site.css").write_text("body {")  # cut short by the kill
        raise Killed

    monkeypatch.setattr(static_collect, "call_command", killed_while_copying)
    with pytest.raises(Killed):
        collect()
    assert seen_marker == [False]
    assert not (static_root / FINGERPRINT_FILE).exists()

    monkeypatch.setattr(static_collect, "call_command", call_command)
    assert collect() is True
    assert (static_root / "app" / "site.css").read_text() == changed.read_text()
    assert collect() is False


def test_two_starts_at_once_one_collects_the_other_finds_it_done(static_root, monkeypatch):
    results: dict[str, bool] = {}
    collections: list[str] = []
    second_waited: list[bool] = []

    def run(name: str) -> Callable[[], None]:
        def target() -> None:
            results[name] = collect()

        return target

    second = threading.Thread(target=run("second"))

    def collecting_while_the_second_starts(*args: Any, **options: Any) -> None:
        collections.append(threading.current_thread().name)
        second.start()
        second.join(timeout=1.0)  # the lock holds it back
        second_waited.append(second.is_alive())
        call_command(*args, **options)

    monkeypatch.setattr(static_collect, "call_command", collecting_while_the_second_starts)
    first = threading.Thread(target=run("first"))
    first.start()
    first.join(timeout=30)
    second.join(timeout=30)

    assert results == {"first": True, "second": False}
    assert second_waited == [True]
    assert len(collections) == 1


def test_a_start_behind_a_stuck_collection_stops_with_a_sentence(static_root, collections):
    static_root.mkdir(parents=True, exist_ok=True)
    with open(static_root / LOCK_FILE, "a") as stuck:
        fcntl.flock(stuck.fileno(), fcntl.LOCK_EX)
        with pytest.raises(CommandError, match="collecting the static files") as raised:
            static_collect_if_changed(ignore_patterns=NOT_SERVED, lock_wait_seconds=0.2)
    assert "start this one again" in str(raised.value)
    assert collections == []


def test_the_product_storage_collects_compressed_files_once(settings, static_root, collections):
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": PRODUCT_STORAGE}}
    assert collect() is True
    assert (static_root / "app" / "site.css.gz").exists()
    assert (static_root / "app" / "site.css.br").exists()
    assert collect() is False

    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": PLAIN_STORAGE}}
    assert collect() is True  # another backend: another fingerprint
    assert len(collections) == 2
