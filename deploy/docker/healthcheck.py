"""Container health checks of the RelayPACS image: ``python deploy/docker/healthcheck.py
web|worker|backup-worker|beat`` (the entrypoint's command of the container); exit status 0
when healthy. Standard library only, so a check costs a few milliseconds, not a Django
start."""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path

# beat saves its schedule at least every 3 minutes (Celery's default sync interval).
BEAT_STALE_SECONDS = 600


def web() -> bool:
    # ALLOWED_HOSTS refuses an unknown Host header, so ask as the first allowed name.
    host = os.environ.get("ALLOWED_HOSTS", "localhost").split(",")[0].strip() or "localhost"
    request = urllib.request.Request(
        f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/api/v1/health",
        headers={"Host": host},
    )
    # 200 is ok or degraded (a PACS away; uploads wait); 503 is failing.
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return bool(response.status == 200)


def worker() -> bool:
    """The worker's metrics port answers. A thread of its own serves it, so it answers
    while a task runs, backup-worker's too (its one solo process runs the task itself)."""
    port = os.environ.get("METRICS_WORKER_PORT", "")
    if not port:
        return True  # nothing cheap to ask; the container's process status decides
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:  # noqa: S310
        return bool(response.status == 200)


def beat() -> bool:
    schedule = Path(os.environ.get("DATA_DIR", "/data")) / "beat" / "celerybeat-schedule"
    candidates = [p for p in schedule.parent.glob(schedule.name + "*")]
    return any(time.time() - p.stat().st_mtime < BEAT_STALE_SECONDS for p in candidates)


if __name__ == "__main__":
    checks = {"web": web, "worker": worker, "backup-worker": worker, "beat": beat}
    try:
        healthy = checks[sys.argv[1]]()
    except Exception as exc:  # noqa: BLE001  (any failure is "unhealthy", said in one line)
        print(f"unhealthy: {type(exc).__name__}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0 if healthy else 1)
