"""What `make run` prints a new user: an address that is a secure context, and commands
that work when pasted as printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings

from uploads.management.commands.serve import browser_url, createsuperuser_command

MANAGE = str(Path(settings.BASE_DIR) / "manage.py")


def _clean_environment(**extra: str) -> dict[str, str]:
    keep = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "DATA_DIR"}
    }
    return {**keep, **extra}


def test_the_printed_address_is_localhost_when_listening_on_every_interface():
    assert browser_url(host="0.0.0.0", port=8000) == "http://localhost:8000/"  # noqa: S104
    assert browser_url(host="127.0.0.1", port=8123) == "http://localhost:8123/"
    assert browser_url(host="10.1.2.3", port=8000) == "http://10.1.2.3:8000/"


def test_the_printed_createsuperuser_command_works_as_printed(tmp_path):
    data_dir = tmp_path / "data"
    environment = _clean_environment(DATA_DIR=str(data_dir))
    subprocess.run(
        [sys.executable, MANAGE, "migrate", "--noinput", "-v0"],
        env=environment,
        check=True,
        cwd=tmp_path,
    )
    command = createsuperuser_command(environ={"DATA_DIR": str(data_dir)}, data_dir=data_dir)
    assert f"DATA_DIR={data_dir}" in command
    result = subprocess.run(
        f"{command} --noinput --username firstadmin --email admin@example.org",
        shell=True,  # noqa: S602 - the command is pasted into a shell by the user
        env=_clean_environment(DJANGO_SUPERUSER_PASSWORD="Long-enough-pass-1"),
        cwd=tmp_path,  # another directory: no stray ./var appears here
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "var").exists()
    count = subprocess.run(
        [
            sys.executable,
            MANAGE,
            "shell",
            "-c",
            "from accounts.models import User; print(User.objects.filter(is_superuser=True).count())",
        ],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    assert count.stdout.strip().splitlines()[-1] == "1"


def test_the_command_keeps_a_database_url_from_the_environment(tmp_path):
    command = createsuperuser_command(
        environ={"DATABASE_URL": "postgres://relay@db:5432/relaypacs", "DATA_DIR": "/x"},
        data_dir=tmp_path,
    )
    assert "DATABASE_URL=postgres://relay@db:5432/relaypacs" in command
    assert f"DATA_DIR={tmp_path}" in command


def test_manage_py_says_the_database_is_not_set_up_instead_of_a_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            MANAGE,
            "createsuperuser",
            "--noinput",
            "--username",
            "x",
            "--email",
            "x@example.org",
        ],
        env=_clean_environment(
            DATA_DIR=str(tmp_path), DJANGO_SUPERUSER_PASSWORD="Long-enough-pass-1"
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "has not been set up yet" in result.stderr
    assert "Traceback" not in result.stderr
