"""Without SECRET_KEY the embedded default makes one into DATA_DIR once
(relaypacs.secret_key): processes that start together agree on it, never read a
half-written file (CI once saw "The SECRET_KEY setting must not be empty" from that race),
and a key file that cannot be made or is empty is refused with a sentence naming it."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from relaypacs import keyfiles
from relaypacs.secret_key import secret_key_kept_in

REPO = Path(__file__).resolve().parents[2]


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_the_key_is_made_once_private_and_kept(tmp_path):
    key_file = tmp_path / ".secret_key"
    key = secret_key_kept_in(key_file)
    assert len(key) >= 50 and key_file.read_text() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert secret_key_kept_in(key_file) == key  # a restart reads the same
    assert _files(tmp_path) == [".secret_key"]  # no draft left


def test_a_process_that_loses_the_race_takes_the_winners_key(tmp_path, monkeypatch):
    """Another process links its key into place between our check and our link."""
    key_file = tmp_path / ".secret_key"
    link = os.link

    def link_after_the_winner(source: Path, target: Path) -> None:
        Path(target).write_text("the-winners-key")
        link(source, target)  # raises FileExistsError, as for a real loser

    monkeypatch.setattr(keyfiles.os, "link", link_after_the_winner)
    assert secret_key_kept_in(key_file) == "the-winners-key"
    assert _files(tmp_path) == [".secret_key"]


def test_a_key_that_cannot_be_written_is_refused_naming_the_way_out(tmp_path, monkeypatch):
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keyfiles.os, "fsync", no_space)
    with pytest.raises(ImproperlyConfigured) as refused:
        secret_key_kept_in(tmp_path / ".secret_key")
    assert str(tmp_path) in str(refused.value)
    assert "No space left on device" in str(refused.value)
    assert "set SECRET_KEY or SECRET_KEY_FILE" in str(refused.value)
    assert _files(tmp_path) == []  # neither the key nor a draft


def test_a_read_only_data_dir_is_refused_naming_the_way_out(tmp_path, monkeypatch):
    def read_only(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(keyfiles.os, "open", read_only)
    with pytest.raises(ImproperlyConfigured) as refused:
        secret_key_kept_in(tmp_path / ".secret_key")
    assert "Read-only file system" in str(refused.value)
    assert "Make DATA_DIR writable" in str(refused.value)


def test_an_empty_key_file_is_refused_naming_it(tmp_path):
    key_file = tmp_path / ".secret_key"
    key_file.write_text("\n")
    with pytest.raises(ImproperlyConfigured, match="is empty") as refused:
        secret_key_kept_in(key_file)
    assert str(key_file) in str(refused.value) and "Delete it" in str(refused.value)


def test_processes_starting_together_on_an_empty_data_dir_agree_on_one_key(tmp_path):
    """The settings as each process reads them (the race itself is too narrow to hit on
    demand; the tests above take each of its turns)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRET_KEY")}
    env.update(DJANGO_SETTINGS_MODULE="relaypacs.settings.test", DATA_DIR=str(tmp_path))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", "from django.conf import settings; print(settings.SECRET_KEY)"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    keys = set()
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        keys.add(out.strip())
    assert len(keys) == 1 and keys == {(tmp_path / ".secret_key").read_text()}
    assert [name for name in _files(tmp_path) if name.startswith(".secret")] == [".secret_key"]
