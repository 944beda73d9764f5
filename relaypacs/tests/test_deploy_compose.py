"""docker-compose.yml and .env.example as shipped. No Docker engine runs here, so: Debian's
``docker-compose config`` must accept the file, and the product must start from exactly
the environment and commands the file gives ``migrate``, ``web``, ``worker`` and
``backup-worker`` (through deploy/docker/entrypoint.sh, as in the image), with only the
other containers' host names and the container paths mapped to this machine: a fresh
PostgreSQL database, this run's Redis, the test Orthanc and a real S3 protocol server
(moto) for MinIO. It must pass ``check --deploy``, migrate, serve through the shipped nginx
conf and deliver an upload, and the daily backup must run on backup-worker alone."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from uploads.tests.helpers import free_port, iter_file_chunks, manifest, sop_uid
from uploads.tests.synthetic import write_study

from .deploy_support import (
    REPO,
    fresh_postgres_database,
    running_nginx,
    this_runs_redis_url,
)

pytestmark = pytest.mark.e2e

ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"
MONITORING_ROLE_SCRIPT = REPO / "deploy" / "postgres" / "initdb" / "10-monitoring-role.sh"
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"
ONE_SHOT = {"migrate", "minio-init", "backup"}
START_SECONDS = 240
PASSWORD = "a long admin password"


def compose_config(work: Path) -> dict[str, Any]:
    """``docker-compose config`` of the shipped file in ``work`` (with its ``.env``)."""
    shutil.copy(REPO / "docker-compose.yml", work / "docker-compose.yml")
    out = subprocess.run(
        [compose_binary(), "--project-directory", str(work), "config"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    config: dict[str, Any] = yaml.safe_load(out.stdout)
    return config


def compose_binary() -> str:
    found = shutil.which("docker-compose")
    if not found:
        pytest.fail("docker-compose is not installed: run scripts/bootstrap.sh.")
    return found


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``docker-compose config`` of the shipped file with .env.example as the .env: the
    file exactly as docker-compose reads it (variables filled in, anchors merged)."""
    work = tmp_path_factory.mktemp("compose")
    shutil.copy(REPO / ".env.example", work / ".env")
    return compose_config(work)


def test_docker_compose_accepts_the_file_and_every_service_is_checked(compose):
    services = compose["services"]
    assert set(services) >= {
        "nginx",
        "web",
        "worker",
        "backup-worker",
        "beat",
        "migrate",
        "db",
        "redis",
        "minio",
        "minio-init",
        "orthanc",
        "prometheus",
        "grafana",
        "postgres-exporter",
        "redis-exporter",
    }
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
        else:
            assert service["healthcheck"]["test"], name
    for name in ("web", "worker", "backup-worker", "beat"):
        needs = services[name]["depends_on"]
        assert needs["migrate"] == {"condition": "service_completed_successfully"}, name
        assert needs["minio-init"] == {"condition": "service_completed_successfully"}, name
        assert services[name]["environment"]["DJANGO_SETTINGS_MODULE"] == (
            "relaypacs.settings.production"
        )
    # Scalable: no fixed name and no host port on web (nginx is the way in).
    assert "container_name" not in services["web"] and "ports" not in services["web"]
    assert services["worker"]["environment"]["METRICS_WORKER_PORT"] == "9808"
    # Backups on a worker of their own (as `manage.py serve` runs them): the worker takes
    # the pipeline's queue only; backup-worker, its own command, checked by its own mode.
    worker, backups = services["worker"], services["backup-worker"]
    assert worker["environment"]["WORKER_QUEUES"] == worker["environment"]["CELERY_QUEUE"]
    assert backups["command"] == ["backup-worker"]
    assert backups["healthcheck"]["test"][-2:] == ["deploy/docker/healthcheck.py", "backup-worker"]
    assert backups["environment"]["METRICS_WORKER_PORT"] == "9808"
    assert backups["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert "WORKER_QUEUES" not in backups["environment"]
    assert backups["image"] == worker["image"] and backups["volumes"] == worker["volumes"]
    assert services["web"]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert services["web"]["environment"]["METRICS_TOKEN_FILE"] == (
        "/run/secrets/relaypacs_metrics_token"
    )
    assert "relaypacs_metrics_token" in services["web"]["secrets"][0]["source"] or any(
        s["source"] == "relaypacs_metrics_token" for s in services["web"]["secrets"]
    )
    mounts = " ".join(str(v) for v in services["nginx"]["volumes"])
    assert "deploy/nginx/relaypacs.conf" in mounts
    # Named volumes for every service's state.
    assert set(compose["volumes"]) >= {"pgdata", "redisdata", "miniodata", "orthancdata", "data"}
    assert "mc mb" in " ".join(services["minio-init"]["command"])


# Settings that are not for a compose deployment: the embedded default's own knobs
# (`serve`'s ports and local PACS), test and development switches, ones compose sets.
NOT_FOR_COMPOSE = {
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "HOST",
    "PORT",
    "HTTPS_PORT",
    "PACS_EMBEDDED_PORT",
    "PACS_EMBEDDED_DICOM_PORT",
    "DEBUG",
    "CELERY_TASK_ALWAYS_EAGER",
    "STATIC_ROOT",
    "EMAIL_BACKEND",
    "METRICS_REQUIRE_AUTH",
    "METRICS_TOKEN",
    "SECRET_KEY",
    "PACS_PASSWORD_FILE",
    "EMAIL_HOST_PASSWORD_FILE",
    "SENTRY_DSN_FILE",
    "ARCHIVE_MAX_EXPANDED_BYTES",
    "WEB_PUSH_ALLOW_INSECURE_ENDPOINTS",  # tests only: http push endpoints on loopback
    "VAPID_PRIVATE_KEY",  # compose gives VAPID_PRIVATE_KEY_FILE (a secret)
}


def test_every_setting_of_the_product_is_in_env_example_or_the_compose_file(compose):
    names: set[str] = set()
    pattern = re.compile(
        r"""(?:env\.(?:str|int|bool|float|list|db)|_env_or_file|environ\.get)\(\s*["']([A-Z][A-Z0-9_]+)["']"""
    )
    for path in [*(REPO / "relaypacs" / "settings").glob("*.py"), REPO / "relaypacs" / "sentry.py"]:
        names |= set(pattern.findall(path.read_text()))
    names -= NOT_FOR_COMPOSE
    example = {
        line.split("=", 1)[0].lstrip("# ").strip()
        for line in (REPO / ".env.example").read_text().splitlines()
        if "=" in line and re.match(r"^#? ?[A-Z][A-Z0-9_]+=", line)
    }
    given: set[str] = set()
    for service in APP_SERVICES:
        given |= set(compose["services"][service]["environment"])
    # A secret read from a file counts as given (NAME_FILE, the compose secret).
    listed = example | given
    missing = sorted(n for n in names if n not in listed and f"{n}_FILE" not in listed)
    assert not missing, f"not in .env.example nor docker-compose.yml: {missing}"


# --- Each service gets only what it needs ---------------------------------------------------

APP_SERVICES = ("web", "worker", "backup-worker", "beat", "migrate", "backup")
# Every variable of the stack that carries a credential (a password, key, token, or an
# address with a password in it), wherever it is read.
CREDENTIALS = {
    "DATABASE_URL",
    "SECRET_KEY",
    "SECRET_KEY_FILE",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "S3_SECRET_ACCESS_KEY_FILE",
    "BACKUP_S3_ACCESS_KEY_ID",
    "BACKUP_S3_SECRET_ACCESS_KEY",
    "BACKUP_S3_SECRET_ACCESS_KEY_FILE",
    "PACS_PASSWORD",
    "PACS_PASSWORD_FILE",
    "PACS_TOKEN",
    "EMAIL_HOST_PASSWORD",
    "EMAIL_HOST_PASSWORD_FILE",
    "METRICS_TOKEN",
    "METRICS_TOKEN_FILE",
    "VAPID_PRIVATE_KEY",
    "VAPID_PRIVATE_KEY_FILE",
    "SENTRY_DSN",
    "SENTRY_DSN_FILE",
    "POSTGRES_PASSWORD",
    "POSTGRES_PASSWORD_FILE",
    "POSTGRES_MONITOR_PASSWORD_FILE",
    "DATA_SOURCE_NAME",
    "DATA_SOURCE_PASS",
    "DATA_SOURCE_PASS_FILE",
    "MINIO_ROOT_USER_FILE",
    "MINIO_ROOT_PASSWORD",
    "MINIO_ROOT_PASSWORD_FILE",
    "ORTHANC__REGISTERED_USERS",
    "GF_SECURITY_ADMIN_PASSWORD",
    "GF_SECURITY_ADMIN_PASSWORD__FILE",
}
# Names that look like credentials and are not: paths, rates, hours.
NOT_CREDENTIALS = {
    "PACS_CLIENT_KEY",  # a path to the key file, not the key
    "THROTTLE_PASSWORD_RESET",
    "AUTH_PASSWORD_RESET_HOURS",
    "UPLOAD_TOKEN_RECHECK_SECONDS",
    "DATA_SOURCE_URI",  # host, port and database, no password
    "DATA_SOURCE_USER",
}
_LOOKS_SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY(_|$)|DSN|REGISTERED_USERS|DATA_SOURCE")
_APP_BASE = {"DATABASE_URL", "SECRET_KEY_FILE", "SENTRY_DSN"}
_WEB_AND_WORKER = _APP_BASE | {
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY_FILE",
    "PACS_PASSWORD",
    "PACS_TOKEN",
    "EMAIL_HOST_PASSWORD",
    "METRICS_TOKEN_FILE",
    "VAPID_PRIVATE_KEY_FILE",
}
# service -> (its credential variables, the compose secrets mounted in it)
EXPECTED_CREDENTIALS: dict[str, tuple[set[str], set[str]]] = {
    "web": (
        _WEB_AND_WORKER,
        {
            "relaypacs_secret_key",
            "relaypacs_s3_secret_key",
            "relaypacs_metrics_token",
            "relaypacs_vapid_private_key",
        },
    ),
    "worker": (
        _WEB_AND_WORKER,
        {
            "relaypacs_secret_key",
            "relaypacs_s3_secret_key",
            "relaypacs_metrics_token",
            "relaypacs_vapid_private_key",
        },
    ),
    # The daily backup: the database, the bucket (the report store, backups/), a backup
    # bucket's own key if set, and the scrape token; no PACS, mail or push.
    "backup-worker": (
        _APP_BASE
        | {
            "S3_ACCESS_KEY_ID",
            "S3_SECRET_ACCESS_KEY_FILE",
            "BACKUP_S3_ACCESS_KEY_ID",
            "BACKUP_S3_SECRET_ACCESS_KEY",
            "METRICS_TOKEN_FILE",
        },
        {"relaypacs_secret_key", "relaypacs_s3_secret_key", "relaypacs_metrics_token"},
    ),
    # Only schedules: Redis and its lock in the database.
    "beat": (_APP_BASE, {"relaypacs_secret_key"}),
    # check --deploy reaches the bucket; backup writes to it.
    "migrate": (
        _APP_BASE | {"S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY_FILE"},
        {"relaypacs_secret_key", "relaypacs_s3_secret_key"},
    ),
    "backup": (
        _APP_BASE
        | {
            "S3_ACCESS_KEY_ID",
            "S3_SECRET_ACCESS_KEY_FILE",
            "BACKUP_S3_ACCESS_KEY_ID",
            "BACKUP_S3_SECRET_ACCESS_KEY",
        },
        {"relaypacs_secret_key", "relaypacs_s3_secret_key"},
    ),
    "db": ({"POSTGRES_PASSWORD", "POSTGRES_MONITOR_PASSWORD_FILE"}, {"postgres_monitor_password"}),
    "postgres-exporter": ({"DATA_SOURCE_PASS_FILE"}, {"postgres_monitor_password"}),
    "redis": (set(), set()),
    "redis-exporter": (set(), set()),
    "nginx": (set(), set()),
    "minio": (
        {"MINIO_ROOT_USER_FILE", "MINIO_ROOT_PASSWORD_FILE"},
        {"minio_root_user", "minio_root_password"},
    ),
    # Makes the bucket and RelayPACS's MinIO user (its key from the secret file).
    "minio-init": (
        {"S3_ACCESS_KEY_ID"},
        {"minio_root_user", "minio_root_password", "relaypacs_s3_secret_key"},
    ),
    "orthanc": ({"ORTHANC__REGISTERED_USERS", "PACS_PASSWORD"}, set()),
    # The scrape token, read by prometheus.yml's credentials_file.
    "prometheus": (set(), {"relaypacs_metrics_token"}),
    "grafana": ({"GF_SECURITY_ADMIN_PASSWORD__FILE"}, {"grafana_admin_password"}),
}


def secret_sources(service: dict[str, Any]) -> set[str]:
    return {s["source"] if isinstance(s, dict) else s for s in service.get("secrets", [])}


def test_each_service_gets_only_the_credentials_it_needs(compose):
    services = compose["services"]
    assert set(services) == set(EXPECTED_CREDENTIALS), "a service is missing from the table"
    for name, service in services.items():
        assert "env_file" not in service, f"{name} reads a whole env_file"
        environment = service.get("environment", {})
        unknown = sorted(
            n
            for n in environment
            if _LOOKS_SECRET.search(n) and n not in CREDENTIALS and n not in NOT_CREDENTIALS
        )
        assert not unknown, f"{name}: add {unknown} to CREDENTIALS or NOT_CREDENTIALS"
        variables, mounted = EXPECTED_CREDENTIALS[name]
        assert {n for n in environment if n in CREDENTIALS} == variables, name
        assert secret_sources(service) == mounted, name
        # Each mounted secret is used: a *_FILE variable names it, or the service's own
        # configuration reads it (minio-init's command, prometheus.yml).
        for secret in mounted:
            used = any(str(v).endswith(secret) for v in environment.values())
            used = used or secret in " ".join(map(str, service.get("command") or []))
            used = used or (
                name == "prometheus"
                and f"/run/secrets/{secret}"
                in (REPO / "deploy" / "prometheus" / "prometheus.yml").read_text()
            )
            assert used, f"{name} mounts {secret} and nothing reads it"
    # Every declared secret is a file in secrets/ that some service uses.
    used = set().union(*(secret_sources(s) for s in services.values()))
    assert used == set(compose["secrets"])


def test_the_exporter_never_gets_the_database_owners_credentials(compose):
    services = compose["services"]
    exporter = services["postgres-exporter"]["environment"]
    assert "DATA_SOURCE_NAME" not in exporter
    assert exporter["DATA_SOURCE_USER"] == services["db"]["environment"]["POSTGRES_MONITOR_USER"]
    assert exporter["DATA_SOURCE_USER"] != services["db"]["environment"]["POSTGRES_USER"]
    assert (
        exporter["DATA_SOURCE_PASS_FILE"]
        == (services["db"]["environment"]["POSTGRES_MONITOR_PASSWORD_FILE"])
    )
    mounts = " ".join(str(v) for v in services["db"]["volumes"])
    assert "deploy/postgres/initdb" in mounts and "/docker-entrypoint-initdb.d" in mounts


def _env_example_read_by() -> dict[str, set[str]]:
    """Each variable set in .env.example and the services its "Read by" line names."""
    readers: set[str] = set()
    found: dict[str, set[str]] = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.startswith("# Read by:"):
            words = line.split(":", 1)[1].split("(")[0]
            readers = {w.strip() for w in words.split(",") if w.strip()}
        elif line.startswith("# ---"):
            readers = set()
        elif re.match(r"^[A-Z][A-Z0-9_]+=", line):
            name = line.split("=", 1)[0]
            assert readers, f".env.example: no 'Read by' line above {name}"
            found[name] = set(readers)
    return found


def test_env_example_says_which_services_read_each_variable(tmp_path):
    """Every variable of .env.example given a value of its own (a number, as ports need),
    then ``docker-compose config``: the services whose configuration holds the value are
    the ones that read it, and .env.example must name exactly them."""
    declared = _env_example_read_by()
    markers = {name: str(41000 + i) for i, name in enumerate(sorted(declared))}
    (tmp_path / ".env").write_text("".join(f"{n}={v}\n" for n, v in markers.items()))
    services = compose_config(tmp_path)["services"]
    texts = {name: json.dumps(service, sort_keys=True) for name, service in services.items()}
    wrong = {}
    for name, marker in markers.items():
        pattern = re.compile(rf"(?<![0-9]){marker}(?![0-9])")
        actual = {service for service, text in texts.items() if pattern.search(text)}
        if actual != declared[name]:
            wrong[name] = {"reaches": sorted(actual), "Read by": sorted(declared[name])}
    assert not wrong, wrong


def test_every_product_setting_of_env_example_reaches_every_service_of_the_product(compose):
    """Without env_file a setting reaches the product only if docker-compose.yml lists it."""
    declared = _env_example_read_by()
    for name, readers in declared.items():
        if readers >= set(APP_SERVICES) - {"migrate", "backup"} and name not in {
            "RELAYPACS_HOST",
            "POSTGRES_PASSWORD",
            "RELAYPACS_IMAGE",
        }:
            for service in APP_SERVICES:
                assert name in compose["services"][service]["environment"], (name, service)


# --- The product with the compose environment --------------------------------------------


def mapped_environment(
    service: dict[str, Any],
    *,
    database_url: str,
    redis_url: str,
    orthanc: Any,
    s3: Any,
    root: Path,
    tmp: Path,
    ports: dict[str, int],
    queue: str,
) -> dict[str, str]:
    """The service's environment from the compose file, with what names another container
    or a path inside this one mapped to this machine (``tmp``: the container's own /tmp);
    every other value as given."""
    env = {k: str(v) for k, v in service["environment"].items()}
    user, password = orthanc.auth
    # Only what the service is given is mapped: nothing is added.

    def host_of(url: str) -> str:
        return urlsplit(url).hostname or ""

    assert host_of(env["DATABASE_URL"]) == "db"
    env["DATABASE_URL"] = database_url
    for name in ("REDIS_URL", "CELERY_BROKER_URL"):
        assert host_of(env[name]) == "redis", name
        env[name] = redis_url  # one Redis database for this run
    assert host_of(env["PACS_DICOMWEB_URL"]) == host_of(env["PACS_ORTHANC_URL"]) == "orthanc"
    env["PACS_DICOMWEB_URL"], env["PACS_ORTHANC_URL"] = orthanc.dicomweb_url, orthanc.url
    if "PACS_PASSWORD" in env:
        env["PACS_USERNAME"], env["PACS_PASSWORD"] = user, password
    assert host_of(env["S3_ENDPOINT_URL"]) == "minio"
    env["S3_ENDPOINT_URL"] = s3.endpoint_url
    # Container paths: /data (the volume), /tmp, /run/secrets (the secrets).
    for name, value in list(env.items()):
        if value.startswith("/data"):
            env[name] = str(root / "data") + value[len("/data") :]
        elif value.startswith("/tmp/"):  # noqa: S108
            env[name] = str(tmp) + value[len("/tmp") :]
        elif value.startswith("/run/secrets/"):
            env[name] = str(root / "secrets" / value.rsplit("/", 1)[1])
    for name, port in ports.items():
        if name in env:
            env[name] = str(port)
    # The Redis here is shared by other test runs: a queue of this test's own, so that no
    # other run's worker takes these tasks (what CELERY_QUEUE is for).
    if "WORKER_QUEUES" in env:
        # The worker's queues are CELERY_QUEUE (docker-compose.yml fills both from it).
        assert env["WORKER_QUEUES"] == env["CELERY_QUEUE"]
        env["WORKER_QUEUES"] = queue
    env["CELERY_QUEUE"] = queue
    # This machine's programs: the image's python is the checkout's virtualenv.
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    env["HOME"] = str(root)
    return env


@contextmanager
def started(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_until(check: Any, *, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not check():
        assert process.poll() is None, f"{what} exited:\n{log.read_text()[-5000:]}"
        assert time.monotonic() < deadline, f"{what} never became ready:\n{log.read_text()[-5000:]}"
        time.sleep(0.5)


# What a worker logs when it receives the daily backup task.
BACKUP_TASK = "Task uploads.tasks.backup_scheduled_task["


def backup_manifests(s3: Any, bucket: str) -> set[str]:
    """The manifests (one per whole backup) under the bucket's backups/ prefix."""
    listing = s3.client().list_objects_v2(Bucket=bucket, Prefix="backups/")
    return {o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith("/manifest.json")}


def queues_and_backup_sent(env: dict[str, str]) -> dict[str, Any]:
    """In one product process (through the entrypoint, as `docker-compose run` would): the
    settings' two queue names, ``celery inspect active_queues`` of this host's worker and
    backup-worker, then the daily backup task sent as beat sends it (``delay``: routed by
    CELERY_TASK_ROUTES)."""
    host = socket.gethostname()
    script = f"""
import json
from django.conf import settings
from relaypacs.celery import app
from uploads.tasks import backup_scheduled_task
replies = app.control.inspect(destination=["worker@{host}", "backups@{host}"], timeout=30)
queues = replies.active_queues() or {{}}
backup_scheduled_task.delay()
print("RESULT " + json.dumps({{
    "pipeline": settings.CELERY_TASK_DEFAULT_QUEUE,
    "backups": settings.CELERY_BACKUP_QUEUE,
    "queues": {{name: sorted(q["name"] for q in qs) for name, qs in queues.items()}},
}}))
"""
    out = subprocess.run(
        [str(ENTRYPOINT), "python", "manage.py", "shell", "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    return result


def healthy(service: str, env: dict[str, str]) -> bool:
    return (
        subprocess.run(
            [env["PATH"].split(":")[0] + "/python", str(HEALTHCHECK), service],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=60,
        ).returncode
        == 0
    )


def test_the_product_runs_with_exactly_the_compose_environment(
    compose, orthanc_clean, s3_server, tmp_path
):
    services = compose["services"]
    root = tmp_path
    for directory in ("data", "tmp", "secrets"):
        (root / directory).mkdir()
    for secret in ("relaypacs_secret_key", "relaypacs_metrics_token", "relaypacs_s3_secret_key"):
        (root / "secrets" / secret).write_text(secrets.token_urlsafe(48) + "\n")
    # What `openssl ecparam -name prime256v1 -genkey -noout` writes (docs/compose.md).
    vapid = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    (root / "secrets" / "relaypacs_vapid_private_key").write_bytes(vapid)
    bucket = services["web"]["environment"]["S3_BUCKET"]
    try:
        s3_server.client().create_bucket(Bucket=bucket)  # what minio-init does
    except s3_server.client().exceptions.BucketAlreadyOwnedByYou:
        pass
    redis_url = this_runs_redis_url()
    ports = {"PORT": free_port(), "METRICS_WORKER_PORT": free_port()}
    # A container of its own: its own metrics port and /tmp (its metrics folder).
    backup_ports = {**ports, "METRICS_WORKER_PORT": free_port()}
    queue = f"relaypacs-compose-test-{secrets.token_hex(4)}"

    with ExitStack() as stack, fresh_postgres_database("h8_compose") as database_url:
        envs = {
            name: mapped_environment(
                services[name],
                database_url=database_url,
                redis_url=redis_url,
                orthanc=orthanc_clean,
                s3=s3_server,
                root=root,
                tmp=root / "tmp" / name,
                ports=backup_ports if name == "backup-worker" else ports,
                queue=queue,
            )
            for name in ("migrate", "web", "worker", "backup-worker")
        }
        # The environments differ only where the compose file says so.
        given = {name: services[name]["environment"] for name in ("web", "worker", "backup-worker")}
        for one, other in (("web", "worker"), ("worker", "backup-worker")):
            common = set(given[one]) & set(given[other])
            assert all(given[one][k] == given[other][k] for k in common), (one, other)

        # migrate: check --deploy (start-up validation), then the locked migrate.
        migrate = subprocess.run(
            [str(ENTRYPOINT), *services["migrate"]["command"]],
            cwd=REPO,
            env=envs["migrate"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        assert "System check identified no issues" in migrate.stdout + migrate.stderr
        # The exporter's role (the db service's init script) on the migrated database:
        # the statistics, none of the product's tables.
        monitor = stack.enter_context(monitoring_role(database_url, root / "monitor"))
        with monitor.connect() as conn:
            assert conn.execute("SELECT count(*) FROM pg_stat_database").fetchone()[0] > 0
            for table in ("accounts_user", "uploads_study", "notifications_pushsubscription"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(f"SELECT 1 FROM {table} LIMIT 1")  # noqa: S608
                conn.rollback()

        web_log, worker_log = root / "web.log", root / "worker.log"
        backup_log = root / "backup-worker.log"
        web = stack.enter_context(
            started([str(ENTRYPOINT), *services["web"]["command"]], envs["web"], web_log)
        )
        worker = stack.enter_context(
            started([str(ENTRYPOINT), *services["worker"]["command"]], envs["worker"], worker_log)
        )
        backup_worker = stack.enter_context(
            started(
                [str(ENTRYPOINT), *services["backup-worker"]["command"]],
                envs["backup-worker"],
                backup_log,
            )
        )
        # The compose health checks, run as the containers would.
        wait_until(lambda: healthy("web", envs["web"]), what="web", process=web, log=web_log)
        wait_until(
            lambda: healthy("worker", envs["worker"]), what="worker", process=worker, log=worker_log
        )
        wait_until(
            lambda: healthy("backup-worker", envs["backup-worker"]),
            what="backup-worker",
            process=backup_worker,
            log=backup_log,
        )
        # Which queues each consumes, as the running workers answer, and the daily backup
        # sent as beat sends it (routed by the settings), while the upload below runs.
        backups_before = backup_manifests(s3_server, bucket)
        answered = queues_and_backup_sent(envs["worker"])
        assert answered["pipeline"] == queue  # CELERY_QUEUE, as the test set it
        # CELERY_BACKUP_QUEUE is empty in .env.example: the settings' default.
        assert answered["backups"] == f"{queue}-backups"
        assert answered["queues"] == {
            f"worker@{socket.gethostname()}": [queue],
            f"backups@{socket.gethostname()}": [f"{queue}-backups"],
        }
        assert "concurrency: 1 (solo)" in backup_log.read_text()

        nginx = stack.enter_context(running_nginx(root / "nginx", upstreams=[ports["PORT"]]))
        host = services["web"]["environment"]["ALLOWED_HOSTS"].split(",")[0]
        http = requests.Session()
        http.trust_env = False
        http.verify = str(nginx.cert)
        http.headers["Host"] = host  # as a browser opening https://<RELAYPACS_HOST>/
        base = nginx.https_base

        subprocess.run(
            [str(ENTRYPOINT), "python", "manage.py", "createsuperuser", "--noinput"],
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=120,
            env={
                **envs["web"],
                "DJANGO_SUPERUSER_USERNAME": "admin",
                "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
                "DJANGO_SUPERUSER_EMAIL": "admin@example.org",
            },
        )
        login = http.post(
            f"{base}/api/v1/auth/login",
            json={"username": "admin", "password": PASSWORD},
            timeout=60,
        )
        assert login.status_code == 200, login.text
        auth = {"Authorization": f"Bearer {login.json()['access']}"}
        health = http.get(f"{base}/api/v1/health", headers=auth, timeout=60).json()
        assert health["status"] == "ok", health
        assert health["checks"]["database"]["state"] == "ok", health
        assert health["checks"]["storage"]["state"] == "ok", health
        # Web Push is on, signed with the key of the secret file (not one made on the disk).
        push = http.get(
            f"{base}/api/v1/notifications/push-subscriptions", headers=auth, timeout=60
        ).json()
        public = serialization.load_pem_private_key(vapid, password=None).public_key()
        point = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        assert push["enabled"] is True, push
        assert push["vapid_public_key"] == base64.urlsafe_b64encode(point).decode().rstrip("=")

        paths = write_study(root / "study", instances=3, instance_bytes=2 * 1024 * 1024)
        chunk_size = 1024 * 1024
        init = http.post(
            f"{base}/api/v1/upload/init",
            json=manifest(paths, chunk_size=chunk_size),
            headers=auth,
            timeout=60,
        )
        assert init.status_code == 201, init.text
        upload = init.json()
        token = {"Authorization": f"Bearer {upload['upload_token']}"}
        for index, data in iter_file_chunks(paths, chunk_size):
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324
            put = http.put(
                f"{base}/api/v1/upload/{upload['upload_id']}/chunk?index={index}",
                data=data,
                headers={**token, "Content-MD5": md5, "Content-Type": "application/octet-stream"},
                timeout=60,
            )
            assert put.status_code == 200, put.text
        # The chunks are in the compose bucket (UPLOAD_STORAGE=s3), not on this disk.
        assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) > 0
        local = [p for p in (root / "data" / "uploads").rglob("*") if p.is_file()]
        assert not [p for p in local if p.stat().st_size >= chunk_size], local
        done = http.post(
            f"{base}/api/v1/upload/{upload['upload_id']}/complete", headers=token, timeout=60
        )
        assert done.status_code == 202, done.text
        deadline = time.monotonic() + 180
        while True:
            status = http.get(
                f"{base}/api/v1/upload/{upload['upload_id']}/status", headers=token, timeout=60
            ).json()
            if status["state"] in {"completed", "failed"} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status["state"] == "completed", (status, worker_log.read_text()[-3000:])
        for path in paths:
            assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes()

        # The backup went to the bucket's backups/ prefix (BACKUP_TARGET empty, S3 mode),
        # taken by backup-worker; the worker never saw it.
        deadline = time.monotonic() + START_SECONDS
        while not backup_manifests(s3_server, bucket) - backups_before:
            assert backup_worker.poll() is None, backup_log.read_text()[-5000:]
            assert time.monotonic() < deadline, backup_log.read_text()[-5000:]
            time.sleep(0.5)
        assert BACKUP_TASK in backup_log.read_text()
        assert BACKUP_TASK not in worker_log.read_text()
        # And the pipeline's tasks only the worker.
        assert "Task uploads.tasks.upload_process_task[" in worker_log.read_text()
        assert "Task uploads.tasks.upload_process_task[" not in backup_log.read_text()

        # The worker's own metrics port (what Prometheus scrapes as worker:9808).
        scraped = requests.get(
            f"http://127.0.0.1:{ports['METRICS_WORKER_PORT']}/metrics", timeout=30
        )
        assert scraped.status_code == 200
        # Not published through nginx; Prometheus scrapes web:8000 itself, with the token
        # from the secret file.
        assert http.get(f"{base}/metrics", timeout=30).status_code == 404
        token_file = Path(envs["web"]["METRICS_TOKEN_FILE"])
        web = f"http://127.0.0.1:{ports['PORT']}"
        as_prometheus = {"Host": "web:8000"}  # the scrape target in prometheus.yml
        assert requests.get(f"{web}/metrics", headers=as_prometheus, timeout=30).status_code in {
            401,
            403,
        }
        metrics = requests.get(
            f"{web}/metrics",
            headers={
                **as_prometheus,
                "Authorization": f"Bearer {token_file.read_text().strip()}",
            },
            timeout=30,
        )
        assert metrics.status_code == 200 and "relaypacs_chunks_received_total" in metrics.text


# --- postgres-exporter's role ----------------------------------------------------------------


@dataclass
class MonitoringRole:
    name: str
    password: str
    database_url: str

    def connect(self) -> psycopg.Connection[Any]:
        """A connection as the role (this machine's PostgreSQL trusts local addresses, so
        the password is checked through its stored verifier, scram_matches)."""
        parts = urlsplit(self.database_url)
        return psycopg.connect(
            host=parts.hostname,
            port=parts.port or 5432,
            dbname=parts.path.lstrip("/"),
            user=self.name,
            password=self.password,
        )


def run_monitoring_role_script(
    database_url: str, *, role: str, password_file: Path
) -> subprocess.CompletedProcess[str]:
    """The init script as the postgres image runs it, against ``database_url``'s server."""
    parts = urlsplit(database_url)
    return subprocess.run(
        ["/bin/sh", str(MONITORING_ROLE_SCRIPT)],
        env={
            "PATH": "/usr/bin:/bin",
            "PGHOST": parts.hostname or "127.0.0.1",
            "PGPORT": str(parts.port or 5432),
            "POSTGRES_USER": parts.username or "postgres",
            "POSTGRES_DB": parts.path.lstrip("/"),
            "POSTGRES_MONITOR_USER": role,
            "POSTGRES_MONITOR_PASSWORD_FILE": str(password_file),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def _admin_connect(database_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(database_url.replace("postgres://", "postgresql://"), autocommit=True)


@contextmanager
def monitoring_role(database_url: str, directory: Path) -> Iterator[MonitoringRole]:
    """The role made by the script (a name of this test's own: roles are server-wide),
    dropped afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    role = f"relaypacs_monitor_test_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(24) + "'\"$;"  # quoting is the script's business
    password_file = directory / "postgres_monitor_password"
    password_file.write_text(password + "\n")
    try:
        made = run_monitoring_role_script(database_url, role=role, password_file=password_file)
        assert made.returncode == 0, made.stdout + made.stderr
        yield MonitoringRole(name=role, password=password, database_url=database_url)
    finally:
        # Through the server's admin database: the test's own may be dropped already.
        with _admin_connect(database_url.rsplit("/", 1)[0] + "/postgres") as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def scram_matches(verifier: str, password: str) -> bool:
    """Whether PostgreSQL's stored SCRAM-SHA-256 verifier is of ``password`` (RFC 5802)."""
    method, rest = verifier.split("$", 1)
    assert method == "SCRAM-SHA-256", method
    iterations_salt, keys = rest.split("$", 1)
    iterations, salt = iterations_salt.split(":")
    stored_key = base64.b64decode(keys.split(":")[0])
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)


def _verifier(database_url: str, role: str) -> str:
    with _admin_connect(database_url) as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role])
        return str(row.fetchone()[0])


def test_the_exporters_role_reads_the_statistics_and_no_table_of_the_product(tmp_path):
    with fresh_postgres_database("relaypacs_exporter") as database_url:
        with _admin_connect(database_url) as owner:
            # A table of the product, made by the database owner as migrate makes them.
            owner.execute("CREATE TABLE uploads_study (patient_name text)")
            owner.execute("INSERT INTO uploads_study VALUES ('Secret^Patient')")
        with monitoring_role(database_url, tmp_path) as role:
            assert scram_matches(_verifier(database_url, role.name), role.password)
            with role.connect() as conn:
                # pg_stat_database and the rest of what the exporter's collectors read.
                row = conn.execute(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                ).fetchone()
                assert row is not None and row[0] is not None
                # pg_read_all_settings (pg_monitor): settings hidden from ordinary roles.
                assert conn.execute("SHOW data_directory").fetchone()[0]
                assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "on"
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("SELECT patient_name FROM uploads_study")
                conn.rollback()
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    conn.execute("CREATE TEMPORARY TABLE probe (x int)")
                conn.rollback()
            with _admin_connect(database_url) as admin:
                superuser, create_role, member = admin.execute(
                    "SELECT rolsuper, rolcreaterole, pg_has_role(%s, 'pg_monitor', 'MEMBER') "
                    "FROM pg_roles WHERE rolname = %s",
                    [role.name, role.name],
                ).fetchone()
            assert (superuser, create_role, member) == (False, False, True)

            # Run again on an existing database (docs/compose.md): the same role, the new
            # password; nothing else changes.
            new_password_file = tmp_path / "new_password"
            new_password_file.write_text("a-new-monitor-password\n")
            again = run_monitoring_role_script(
                database_url, role=role.name, password_file=new_password_file
            )
            assert again.returncode == 0, again.stderr
            assert scram_matches(_verifier(database_url, role.name), "a-new-monitor-password")

            # No password file: a sentence naming it, and nothing made.
            missing = run_monitoring_role_script(
                database_url, role=role.name + "_x", password_file=tmp_path / "nothing"
            )
            assert missing.returncode != 0
            assert "password file" in missing.stderr and str(tmp_path / "nothing") in (
                missing.stderr
            )
            with _admin_connect(database_url) as admin:
                assert not admin.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", [role.name + "_x"]
                ).fetchone()


def test_start_up_validation_names_a_missing_or_malformed_variable(compose, tmp_path):
    base_env = {
        k: str(v)
        for k, v in compose["services"]["migrate"]["environment"].items()
        if not str(v).startswith("/run/secrets/")
    }
    base_env.update(
        PATH=f"{REPO / '.venv' / 'bin'}:/usr/bin:/bin",
        DATA_DIR=str(tmp_path / "data"),
        REPORT_STORAGE_DIR=str(tmp_path / "data" / "reports"),
        UPLOAD_STORAGE_DIR=str(tmp_path / "data" / "uploads"),
        SECRET_KEY="a-test-secret-key-that-is-long-enough-for-check-deploy-0123456789",
    )
    base_env.pop("SECRET_KEY_FILE", None)
    cases = {
        "PUBLIC_BASE_URL": (None, "PUBLIC_BASE_URL"),
        "TRUSTED_PROXY_COUNT": ("one", "TRUSTED_PROXY_COUNT"),
        "DATABASE_URL": ("not a url", "DATABASE_URL"),
        "UPLOAD_STORAGE": ("nfs", "UPLOAD_STORAGE"),
        "PACS_TIMEOUT_SECONDS": ("two minutes", "PACS_TIMEOUT_SECONDS"),
        # django-environ alone reads an unknown word as false (mail without TLS).
        "EMAIL_USE_TLS": ("ture", "EMAIL_USE_TLS"),
    }
    for name, (value, named) in cases.items():
        env = dict(base_env)
        if value is None:
            del env[name]
        else:
            env[name] = value
        out = subprocess.run(
            [str(ENTRYPOINT), "python", "manage.py", "check"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode != 0, name
        # A settings error: its last line is the sentence; a system check: its message.
        last = (out.stderr.strip().splitlines() or [""])[-1]
        assert named in last or f"{named} is '" in out.stderr, (name, out.stderr[-2000:])
