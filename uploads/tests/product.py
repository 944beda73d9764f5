"""The product as `make run` starts it (`manage.py serve`: SQLite, embedded broker), for
end-to-end tests; shared by the API and the browser tests."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from uploads.tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
# Four processes starting (migrations and static files prepared once, see below): about
# 5 s here when idle; a loaded 2-core machine (browser tests beside) has taken 90 s.
START_TIMEOUT = 180
# Shared by every product the tests start, in every pytest process and later runs of this
# checkout: the static files collected once (serve collects only when they changed:
# relaypacs/static_collect.py) and an SQLite database migrated once per set of migrations,
# copied into each product's DATA_DIR (a product migrating a new database spent 5-20 s of
# CPU on it at every start). `serve` still runs its migrations: they find nothing to do.
# A product started with ``fresh=True`` uses neither: it migrates and collects as `make run`
# does on a new machine.
SHARED = REPO / "var" / "tests"


@dataclass
class RunningProduct:
    base: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path


def product_env(
    data_dir: Path, orthanc: Any, *, fresh: bool = False, **overrides: str
) -> dict[str, str]:
    """The environment of `make run` pointed at the test Orthanc, with short timings; with
    ``fresh``, no migrated database copied in and STATIC_ROOT the default (in DATA_DIR)."""
    # Not inherited: the test session's own (reports/tests/conftest.py exports its session
    # report store in REPORT_STORAGE_DIR); the product keeps its reports in DATA_DIR/reports.
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "CELERY_BROKER_URL",
            "REDIS_URL",
            "DJANGO_SETTINGS_MODULE",
            "REPORT_STORAGE_DIR",
            *(["STATIC_ROOT"] if fresh else []),
        }
    }
    user, password = orthanc.auth
    env.update(
        DATA_DIR=str(data_dir),
        PORT=str(free_port()),
        HOST="127.0.0.1",
        PACS_DICOMWEB_URL=orthanc.dicomweb_url,
        PACS_ORTHANC_URL=orthanc.url,
        PACS_USERNAME=user,
        PACS_PASSWORD=password,
        REDISPATCH_INTERVAL_SECONDS="2",
        UPLOAD_LEASE_SECONDS="5",
        WEB_WORKERS="1",
    )
    if not fresh:
        env.setdefault("STATIC_ROOT", str(SHARED / "static"))
    env.update(overrides)
    if not fresh and "DATABASE_URL" not in overrides:
        database = data_dir / "relaypacs.sqlite3"
        if not database.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            _copy_sqlite(migrated_database(env), database)
    return env


def _migrations_fingerprint() -> str:
    """This checkout's migrations and every installed distribution's version (a Django or
    third-party upgrade can bring migrations of its own)."""
    digest = hashlib.sha256()
    for path in sorted(REPO.glob("*/migrations/*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    installed = {f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()}
    for pair in sorted(installed):
        digest.update(pair.encode() + b"\n")
    return digest.hexdigest()[:16]


def migrated_database(env: dict[str, str]) -> Path:
    """An SQLite database with every migration of this checkout applied (made once, under
    a lock, by `manage.py migrate` in ``env`` with a DATA_DIR of its own)."""
    SHARED.mkdir(parents=True, exist_ok=True)
    template = SHARED / f"db-{_migrations_fingerprint()}.sqlite3"
    with open(SHARED / "db.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if template.exists():
            return template
        with tempfile.TemporaryDirectory(dir=SHARED) as scratch:
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "--verbosity=0"],
                cwd=REPO,
                env={
                    **{
                        k: v
                        for k, v in env.items()
                        if k not in {"DATABASE_URL", "DJANGO_SETTINGS_MODULE"}
                    },
                    "DATA_DIR": scratch,
                },
                check=True,
                capture_output=True,
                timeout=600,
            )
            partial = SHARED / f"{template.name}.partial"
            _copy_sqlite(Path(scratch) / "relaypacs.sqlite3", partial)
            os.replace(partial, template)
        return template


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy by SQLite's backup API (whatever its journal holds)."""
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


@contextmanager
def running_product(
    tmp_path: Path, orthanc: Any, *, fresh: bool = False, **overrides: str
) -> Iterator[RunningProduct]:
    """Start `manage.py serve`, wait until /api/v1/health answers, kill it all afterwards;
    ``fresh``: on a new database and STATIC_ROOT (see product_env)."""
    env = product_env(tmp_path / "data", orthanc, fresh=fresh, **overrides)
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{env['PORT']}"
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                assert process.poll() is None, log_path.read_text()
                try:
                    if requests.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.3)
            else:
                raise AssertionError(log_path.read_text())
            yield RunningProduct(base, env, process, log_path)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def manage(product: RunningProduct, *args: str) -> str:
    """``manage.py`` with the running product's environment (its database); its output."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=product.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def totp_now(key_hex: str) -> str:
    """The current code of a TOTP device with this key (hex), as the user's app shows it."""
    from django_otp.oath import totp

    return f"{totp(bytes.fromhex(key_hex)):06d}"


def admin_access_token(base: str, env: dict[str, str]) -> str:
    """Create the product's first administrator (as the README says) and sign it in; its
    access token."""
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
        env={
            **env,
            "DJANGO_SUPERUSER_USERNAME": "admin",
            "DJANGO_SUPERUSER_PASSWORD": "a long admin password",
            "DJANGO_SUPERUSER_EMAIL": "admin@example.org",
        },
    )
    login = requests.post(
        f"{base}/api/v1/auth/login",
        json={"username": "admin", "password": "a long admin password"},
        timeout=30,
    )
    assert login.status_code == 200, login.text
    return str(login.json()["access"])
