"""Test settings: PostgreSQL and Redis as on CI, fast password hashing."""

import os
from urllib.parse import urlsplit

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/7")

# Redis's default number of databases (`databases 16` in redis.conf).
REDIS_DATABASES = 16


def _redis_url_of_this_test_process(name: str) -> None:
    """Give each pytest-xdist process (gw0, gw1, ...) a Redis database of its own.

    Each process starts a Celery worker that flushes its broker database at start and
    must consume only the tasks of its own process (whose test database it reads), and
    channel-layer groups are named after user ids that every process's database reuses:
    process gwN uses the configured database number + N. The configured URL is kept in
    RELAYPACS_TEST_<name>, inherited by the processes a test starts (the Celery worker
    runs these settings too), so that each of them derives the same URL again.
    """
    given = os.environ.setdefault(f"RELAYPACS_TEST_{name}", os.environ.get(name, ""))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not given.startswith(("redis://", "rediss://")) or not worker.startswith("gw"):
        return
    parts = urlsplit(given)
    number = int(parts.path.strip("/") or 0) + int(worker[2:])
    if number >= REDIS_DATABASES:
        raise RuntimeError(
            f"pytest-xdist process {worker} would use Redis database {number}, past the "
            f"last of {REDIS_DATABASES}: set {name} to a lower database number or run "
            "fewer processes (-n)."
        )
    os.environ[name] = parts._replace(path=f"/{number}").geturl()


def _redis_databases_do_not_overlap() -> None:
    """Refuse two configured Redis URLs whose per-process ranges overlap.

    With -n 2, CELERY_BROKER_URL=.../7 and REDIS_URL=.../8 would give gw1's broker and
    gw0's cache the same database 8 (each Celery worker flushes its broker database at
    start). The same database for both names is fine: they are then shared on purpose.
    """
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    ranges = {}
    for name in ("CELERY_BROKER_URL", "REDIS_URL"):
        given = os.environ.get(f"RELAYPACS_TEST_{name}", "")
        if given.startswith(("redis://", "rediss://")):
            parts = urlsplit(given)
            base = int(parts.path.strip("/") or 0)
            ranges[name] = (parts.netloc, base, set(range(base, base + count)))
    if len(ranges) == 2:
        (host_a, base_a, a), (host_b, base_b, b) = ranges.values()
        if host_a == host_b and base_a != base_b and a & b:
            raise RuntimeError(
                f"CELERY_BROKER_URL (database {base_a}) and REDIS_URL (database {base_b}) "
                f"would share Redis databases between the {count} test processes: give them "
                f"the same database, or numbers at least {count} apart."
            )


for _name in ("CELERY_BROKER_URL", "REDIS_URL"):
    _redis_url_of_this_test_process(_name)
_redis_databases_do_not_overlap()

from .base import *  # noqa: E402,F403
from .base import env, upload_fsync_mode  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
UPLOAD_FSYNC = upload_fsync_mode(env.str("UPLOAD_FSYNC", default="off"))
# Connections of the lean chunk endpoint close after each request, so that no thread keeps
# the test database open when it is dropped.
CHUNK_DB_CONN_MAX_AGE = 0
# A test process that imports relaypacs.asgi keeps glibc's defaults: its memory tests
# measure those, as the Celery worker runs with them (relaypacs/tests/test_malloc.py tests
# the tuning itself).
WEB_MALLOC_TUNING = False
# A loaded test machine can keep a free thread from running for a while: no advice in
# answers that tests compare, unless a test asks for it.
UPLOAD_CHUNK_BUSY_SECONDS = 30.0
# Upload tokens are checked against their session on every request (tests revoke them).
UPLOAD_TOKEN_RECHECK_SECONDS = 0
# Each test process keeps its own rate-limit counters (tests clear them).
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
