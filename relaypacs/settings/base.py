"""Settings shared by every environment.

All environment access goes through django-environ here. With no environment at all the
product runs on its embedded default: SQLite, local files and a filesystem Celery broker
under ``DATA_DIR``, and a local Orthanc PACS on 127.0.0.1:8042.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from relaypacs.logging_context import logging_config
from relaypacs.secret_key import secret_key_kept_in
from relaypacs.sentry import sentry_init

BASE_DIR = Path(__file__).resolve().parent.parent.parent
env = environ.Env()

DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_from_env_or_data_dir() -> str:
    """SECRET_KEY (or SECRET_KEY_FILE); otherwise one generated once and kept in DATA_DIR.

    Keeping it in DATA_DIR means upload tokens and sessions survive a restart of the
    embedded default. Production settings refuse this fallback.
    """
    if env.str("SECRET_KEY_FILE", default=""):
        return Path(env.str("SECRET_KEY_FILE")).read_text().strip()
    if env.str("SECRET_KEY", default=""):
        return env.str("SECRET_KEY")
    return secret_key_kept_in(DATA_DIR / ".secret_key")


SECRET_KEY = _secret_from_env_or_data_dir()
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["*"])
PORT = env.int("PORT", default=8000)
# When set, `manage.py serve` also serves HTTPS on this port with a self-signed certificate
# made for the clinic network (phones need a secure context for the offline app).
HTTPS_PORT = env.int("HTTPS_PORT", default=0)

INSTALLED_APPS = [
    "relaypacs.admin_config.RelayAdminConfig",  # django.contrib.admin with 2FA sign-in
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    # Swagger UI served from the product, pinned: the API docs work offline and on a
    # closed hospital network (no CDN).
    "drf_spectacular_sidecar",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "axes",
    "channels",
    "django_prometheus",
    "accounts",
    "pacs",
    "uploads",
    "reports",
    "notifications",
    "analytics",
]

MIDDLEWARE = [
    # First and last (django-prometheus): requests by view and status, and their latency.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # A request id for every log line of the request and of the tasks it starts.
    "relaypacs.logging_context.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # A session cookie of the staff web or the admin site ends with its AuthSession.
    "accounts.middleware.AuthSessionMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "accounts.middleware.PatientDataAccessAuditMiddleware",
    # Last, as django-axes asks: it turns a lockout on the admin sign-in into a response.
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "relaypacs.urls"
WSGI_APPLICATION = "relaypacs.wsgi.application"
ASGI_APPLICATION = "relaypacs.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'relaypacs.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Concurrent chunk writers, the worker and beat share one file: WAL lets readers run
    # beside the writer, IMMEDIATE takes the write lock at BEGIN (no deadlocking upgrades),
    # and the busy timeout makes writers queue instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

AUTHENTICATION_BACKENDS = [
    # First, so a locked-out username and address is refused before the password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",  # cost 12 (Django's default)
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator",
        "OPTIONS": {"user_attributes": ["username", "full_name", "email"]},
    },
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
    {"NAME": "accounts.validators.CharacterClassesValidator"},
]

# --- Redis that stops answering ---------------------------------------------------------
# A Redis that stops answering without closing its connections (a host gone, a network that
# drops packets) would hold whatever waits on it, e.g. a request that queues a task, for as
# long as TCP keeps the connection. Every Redis client of the product (the broker, the
# cache, the live events' channel layer) waits at most this long for a connection or an
# answer (uploads/tests/test_broker_unanswered.py). At least 2 s: the broker's own blocking
# reads last 1 s.
REDIS_SOCKET_TIMEOUT_SECONDS = env.float("REDIS_SOCKET_TIMEOUT_SECONDS", default=5.0)
if REDIS_SOCKET_TIMEOUT_SECONDS < 2:
    raise ImproperlyConfigured(
        "The environment variable REDIS_SOCKET_TIMEOUT_SECONDS is too small: Redis's "
        "blocking reads last 1 s, so it must be at least 2. Raise it and start again."
    )

# --- Cache: rate-limit counters and audit de-duplication, shared by every process ------
if env.str("REDIS_URL", default=""):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": env.str("REDIS_URL"),
            "OPTIONS": {
                "socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
                "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
            },
        }
    }
else:
    # The embedded default runs several processes on one machine: a folder they share.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
        }
    }

# --- Accounts and security -------------------------------------------------------------
# A session (one signed-in device) that has not refreshed or called the API for this long
# ends: the device must sign in again. Long enough for a clinic closed over a weekend.
AUTH_SESSION_IDLE_TIMEOUT = timedelta(hours=env.int("AUTH_SESSION_IDLE_HOURS", default=72))
# The cookie of the staff web and admin site lasts at most a working day from sign-in
# (Django's default is two weeks); its AuthSession's revocation or idle timeout ends it sooner.
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE_HOURS", default=12) * 3600
# Email verification and password reset links stay valid this long.
AUTH_EMAIL_LINK_MAX_AGE = timedelta(hours=env.int("AUTH_EMAIL_LINK_HOURS", default=48))
PASSWORD_RESET_TIMEOUT = env.int("AUTH_PASSWORD_RESET_HOURS", default=2) * 3600
# Where the links in emails point: the PWA (or this server) as seen by the user.
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default=f"http://localhost:{PORT}")
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
if env.str("EMAIL_HOST_PASSWORD_FILE", default=""):
    EMAIL_HOST_PASSWORD = Path(env.str("EMAIL_HOST_PASSWORD_FILE")).read_text().strip()
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="RelayPACS <relaypacs@localhost>")
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="RelayPACS")
# Never show TOTP keys or backup codes in the admin.
OTP_ADMIN_HIDE_SENSITIVE_DATA = True
# Brute force (django-axes): 10 consecutive failures lock that username from that address
# only, so one clinic behind a shared address does not lock out its colleagues.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
AXES_CLIENT_IP_CALLABLE = "accounts.clientinfo.client_ip"
# How many reverse proxies in front of us append to X-Forwarded-For; 0 trusts none of it,
# so a client cannot choose the address its failures count against (docs/security.md).
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(DATA_DIR / "staticfiles")))
STATICFILES_DIRS = [p for p in [BASE_DIR / "static"] if p.exists()]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Django's defaults (2.5 MiB) for the bodies Django reads: no chunk is among them (the lean
# endpoint reads chunk bodies itself, within the chunk memory budget, and hands Django none
# of a chunk PUT it passes on: uploads/chunk_endpoint.py); a body beyond this is spooled to
# an unlinked temporary file, and a form beyond it refused.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# --- API ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # JWT first: its WWW-Authenticate header makes an anonymous call 401, never 403.
        "accounts.authentication.SessionJWTAuthentication",
        "uploads.authentication.UploadTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "relaypacs.errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": None,
    # Per client address; far above what a clinic signs in, registers or resets in an hour.
    # Client addresses for throttling come from REMOTE_ADDR, or from X-Forwarded-For only
    # through the configured number of trusted proxies (a client cannot spoof its way out).
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
    "DEFAULT_THROTTLE_RATES": {
        "auth_login": env.str("THROTTLE_LOGIN", default="30/min"),
        "auth_register": env.str("THROTTLE_REGISTER", default="20/hour"),
        "auth_password_reset": env.str("THROTTLE_PASSWORD_RESET", default="20/hour"),
    },
}
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=60)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=7)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": True,
    "ALGORITHM": "HS256",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "RelayPACS API",
    "DESCRIPTION": "Resumable, offline-first DICOM ingestion into a hospital PACS.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # One name per choice set, so the schema (and `check --deploy`) has no enum collisions.
    "ENUM_NAME_OVERRIDES": {
        "ServiceLevelEnum": ["routine", "urgent", "emergency", "stat"],
        "ServiceLevelLabelledEnum": "uploads.models.ServiceLevel",
    },
}

# --- Celery ---------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://")
BROKER_DIR = DATA_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The embedded broker: messages are files in DATA_DIR, so nothing needs a server.
    # Losing one is harmless: upload state and leases live in the database and beat
    # re-dispatches any work whose lease expired.
    BROKER_DIR.mkdir(parents=True, exist_ok=True)
    # kombu's filesystem transport, with message files that appear only once written
    # (a worker could take a half-written one and die on it).
    CELERY_BROKER_TRANSPORT = "relaypacs.embedded_broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR),
        "data_folder_out": str(BROKER_DIR),
        # kombu's default is "control" in the working directory (the exchange table for
        # broadcasts such as `celery inspect`): keep it with the rest of the broker's files.
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        # kombu looks for messages once a second by default, which an upload waits out
        # before processing starts. Every 0.1 s costs an idle worker 0.3% of a core
        # (measured here: 3 ms of CPU per second, against 1 ms at the default).
        "polling_interval": 0.1,
    }
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # Redis hands a task that a worker took but has not acknowledged (acks_late: until it
    # ends) to a worker again after visibility_timeout, e.g. the forwarding of a 20 GB
    # study. That second delivery is harmless: it finds the upload's lease held (renewed
    # during every STOW request) and does nothing (uploads/tests/test_redelivery_e2e.py).
    # The sweep that hands such tasks back runs every tenth of it (at most every 100 s).
    BROKER_VISIBILITY_TIMEOUT_SECONDS = env.int("BROKER_VISIBILITY_TIMEOUT_SECONDS", default=3600)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # See REDIS_SOCKET_TIMEOUT_SECONDS. kombu's blocking reads (BRPOP) last 1 s; the
        # worker's event loop and its PUBSUB reads wait without a timeout (kombu's doing).
        "socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
        "visibility_timeout": BROKER_VISIBILITY_TIMEOUT_SECONDS,
        "unacked_restore_interval": max(1, min(10, BROKER_VISIBILITY_TIMEOUT_SECONDS // 10)),
        "unacked_restore_throttle": 1 if BROKER_VISIBILITY_TIMEOUT_SECONDS < 1000 else 10,
    }
# Several deployments on one Redis (or RabbitMQ vhost) keep apart with a queue each.
# An empty value means unset (a compose file passes `${CELERY_QUEUE:-}`).
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_QUEUE", default="") or "celery"
# The daily backup has a queue of its own: it runs for minutes to hours and would hold one
# of processing's worker slots. `manage.py serve` and the compose stack run a worker for it
# alone (serve's backup worker, compose's backup-worker service); a worker started without
# -Q consumes both queues.
CELERY_BACKUP_QUEUE = (
    env.str("CELERY_BACKUP_QUEUE", default="") or f"{CELERY_TASK_DEFAULT_QUEUE}-backups"
)
CELERY_TASK_QUEUES = tuple(
    Queue(name, Exchange(name), routing_key=name)  # apart: a message reaches one queue only
    for name in (CELERY_TASK_DEFAULT_QUEUE, CELERY_BACKUP_QUEUE)
)
CELERY_TASK_ROUTES = {"uploads.tasks.backup_scheduled_task": {"queue": CELERY_BACKUP_QUEUE}}
# Beat sends only while it holds a database lock, so every node may run one (serve does).
CELERY_BEAT_SCHEDULER = "relaypacs.beat_lock:LockedScheduler"
# A beat holding that lock but silent this long (hung, cut off) loses it to another.
BEAT_LOCK_IDLE_SECONDS = env.int("BEAT_LOCK_IDLE_SECONDS", default=60)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
# How often beat looks for work whose lease expired or whose retry time came.
REDISPATCH_INTERVAL_SECONDS = env.int("REDISPATCH_INTERVAL_SECONDS", default=15)
CELERY_BEAT_SCHEDULE = {
    "uploads-redispatch": {
        "task": "uploads.tasks.uploads_redispatch",
        "schedule": REDISPATCH_INTERVAL_SECONDS,
    },
    "uploads-cleanup": {
        "task": "uploads.tasks.uploads_cleanup",
        "schedule": env.int("CLEANUP_INTERVAL_SECONDS", default=900),
    },
    # Upload folders that no live upload owns (a rolled-back init, a failed deletion after
    # an admin removed the upload): hourly, each past uploads.services.maintenance.ORPHAN_GRACE.
    "uploads-sweep": {
        "task": "uploads.tasks.upload_folders_sweep",
        "schedule": 3600,
    },
    # Expired refresh tokens and long-ended sessions: hourly keeps the tables small.
    "accounts-cleanup": {
        "task": "accounts.tasks.auth_records_cleanup_task",
        "schedule": 3600,
    },
}

# --- Backups (uploads/management/backups.py, docs/deployment.md) ------------------------
# A folder, or s3://<bucket>/<prefix>; empty: DATA_DIR/backups, or the backups/ prefix of
# S3_BUCKET when UPLOAD_STORAGE=s3.
BACKUP_TARGET = env.str("BACKUP_TARGET", default="")
BACKUP_KEEP = env.int("BACKUP_KEEP", default=7)
# Beat's daily backup at this time of day, HH:MM in TIME_ZONE (UTC), or "off".
BACKUP_SCHEDULE = env.str("BACKUP_SCHEDULE", default="02:30").strip().lower()
if BACKUP_SCHEDULE != "off":
    try:
        _backup_hour, _backup_minute = (int(part) for part in BACKUP_SCHEDULE.split(":"))
        if not (0 <= _backup_hour < 24 and 0 <= _backup_minute < 60):
            raise ValueError(BACKUP_SCHEDULE)
    except ValueError:
        raise ImproperlyConfigured(
            "The environment variable BACKUP_SCHEDULE is malformed: it must be a time of "
            'day as HH:MM (e.g. 02:30) or "off". Correct BACKUP_SCHEDULE and start again.'
        ) from None
    CELERY_BEAT_SCHEDULE["backup-daily"] = {
        "task": "uploads.tasks.backup_scheduled_task",
        "schedule": crontab(hour=_backup_hour, minute=_backup_minute),
    }

# --- Uploads --------------------------------------------------------------------------
UPLOAD_STORAGE_DIR = Path(env.str("UPLOAD_STORAGE_DIR", default=str(DATA_DIR / "uploads")))
# Where upload bytes live: "local" (UPLOAD_STORAGE_DIR, the embedded default) or "s3" (an
# S3-compatible bucket, for several nodes; UPLOAD_STORAGE_DIR then holds only processing's
# scratch). Unset S3 credentials fall back to boto3's chain (AWS_* variables, instance role).
UPLOAD_STORAGE = env.str("UPLOAD_STORAGE", default="local").lower()


def _env_or_file(name: str) -> str:
    """``NAME``, or the content of the file ``NAME_FILE`` names (secrets mounted as files)."""
    if env.str(f"{name}_FILE", default=""):
        return Path(env.str(f"{name}_FILE")).read_text().strip()
    return env.str(name, default="")


S3_ENDPOINT_URL = _env_or_file("S3_ENDPOINT_URL")
S3_BUCKET = _env_or_file("S3_BUCKET")
S3_REGION = _env_or_file("S3_REGION")
S3_ACCESS_KEY_ID = _env_or_file("S3_ACCESS_KEY_ID")
S3_SECRET_ACCESS_KEY = _env_or_file("S3_SECRET_ACCESS_KEY")
# Backups into a bucket (BACKUP_TARGET=s3://...) reach S3 with these where set, each one
# falling back to its S3_* value: a backup bucket elsewhere, or a key of its own that may
# write backups/ (scheduled backups run on the worker, which therefore holds it; web need
# not) (uploads/management/backup_bucket.py).
BACKUP_S3_ENDPOINT_URL = _env_or_file("BACKUP_S3_ENDPOINT_URL")
BACKUP_S3_REGION = _env_or_file("BACKUP_S3_REGION")
BACKUP_S3_ACCESS_KEY_ID = _env_or_file("BACKUP_S3_ACCESS_KEY_ID")
BACKUP_S3_SECRET_ACCESS_KEY = _env_or_file("BACKUP_S3_SECRET_ACCESS_KEY")
UPLOAD_MAX_TOTAL_SIZE = env.int("UPLOAD_MAX_TOTAL_SIZE", default=20 * 1024**3)
UPLOAD_MIN_CHUNK_SIZE = 256 * 1024
UPLOAD_MAX_CHUNK_SIZE = 16 * 1024 * 1024
# A web process keeps the memory of received chunks mapped between chunks (relaypacs/malloc.py).
WEB_MALLOC_TUNING = True
UPLOAD_DEFAULT_CHUNK_SIZE = env.int("UPLOAD_DEFAULT_CHUNK_SIZE", default=1024 * 1024)
UPLOAD_RESUME_WINDOW = timedelta(hours=env.float("UPLOAD_RESUME_WINDOW_HOURS", default=24))
# A worker renews its lease after every STOW batch; past it, beat hands the work to another.
UPLOAD_LEASE_SECONDS = env.int("UPLOAD_LEASE_SECONDS", default=300)
UPLOAD_DUPLICATE_WINDOW = timedelta(days=env.int("UPLOAD_DUPLICATE_WINDOW_DAYS", default=30))
# When local upload bytes are flushed to disk (uploads/storage/local.py). "complete": once,
# when complete takes the upload, which then checks every acknowledged chunk is on disk and
# asks the client again for any a power cut lost (the app keeps a study's files until it is
# completed); "chunk": also before every chunk's answer (slower ingest); "off": never (tests,
# throwaway machines; the check at complete still runs). The old true/false mean chunk/off.
UPLOAD_FSYNC_MODES = ("complete", "chunk", "off")
_UPLOAD_FSYNC_ALIASES = {
    **{value: "chunk" for value in environ.Env.BOOLEAN_TRUE_STRINGS},
    **{value: "off" for value in ("false", "no", "n", "0")},
}


def upload_fsync_mode(value: str) -> str:
    """The UPLOAD_FSYNC mode ``value`` names; raises ImproperlyConfigured with a sentence
    naming the variable and its allowed values (not the value: it is the operator's)."""
    word = value.strip().lower()
    mode = _UPLOAD_FSYNC_ALIASES.get(word, word)
    if mode not in UPLOAD_FSYNC_MODES:
        raise ImproperlyConfigured(
            "The environment variable UPLOAD_FSYNC is malformed: it must be complete (the "
            "default), chunk or off (true and false are read as chunk and off). Correct "
            "UPLOAD_FSYNC and start again."
        )
    return mode


UPLOAD_FSYNC = upload_fsync_mode(env.str("UPLOAD_FSYNC", default="complete"))
# Seconds the lean chunk endpoint (uploads.chunk_endpoint) keeps a database connection of
# its thread pool open for the next chunks; opening one per chunk cost ~8% of its CPU.
CHUNK_DB_CONN_MAX_AGE = env.int("CHUNK_DB_CONN_MAX_AGE", default=300)
# Bytes of chunk bodies one web process holds in memory at once (uploads.chunk_memory);
# chunk PUTs beyond it wait without reading. A chunk holds its bytes while its body
# arrives, so slow links hold them longest: 256 MiB is 256 chunks of 1 MiB (64 clinics
# sending four at once on slow links) or 32 of 8 MiB (the PWA's size on fast links); never
# below UPLOAD_MAX_CHUNK_SIZE (raised to it).
CHUNK_MEMORY_BUDGET_BYTES = env.int("CHUNK_MEMORY_BUDGET_BYTES", default=256 * 1024 * 1024)
# Seconds a chunk PUT waits for room in that budget before it is answered 503 server_busy
# (Retry-After): below the 60 s nginx waits on an upstream that reads nothing.
CHUNK_MEMORY_WAIT_SECONDS = env.float("CHUNK_MEMORY_WAIT_SECONDS", default=30)
# Seconds a chunk's body may wait for one of its web process's chunk threads (behind at
# least as many waiting chunks as there are threads) before the answer asks the client to send one chunk at a time for a while (max_in_flight: 1): more
# chunks arrive than the process stores, and more of them at once only queue. Idle, a chunk
# waits well under a millisecond; 50 clinics flat out on 2 cores made it 0.6 s.
UPLOAD_CHUNK_BUSY_SECONDS = env.float("UPLOAD_CHUNK_BUSY_SECONDS", default=0.1)
# Seconds a verified upload token is trusted by a web process before its sign-in session
# and account are checked again: signing out stops chunk uploads within this time.
UPLOAD_TOKEN_RECHECK_SECONDS = env.int("UPLOAD_TOKEN_RECHECK_SECONDS", default=10)
# Disk kept free beside the largest upload, so the database and logs can still write.
UPLOAD_DISK_RESERVE = env.int("UPLOAD_DISK_RESERVE", default=256 * 1024 * 1024)

# Archives (ZIP, RAR) are unpacked under these limits, checked while unpacking.
ARCHIVE_MAX_EXPANDED_BYTES = env.int(
    "ARCHIVE_MAX_EXPANDED_BYTES", default=2 * UPLOAD_MAX_TOTAL_SIZE
)
# DICOM rarely compresses beyond 20:1 while zeros reach 1000:1: 100 leaves room for both
# sparse images and a margin, and stops bombs.
ARCHIVE_MAX_RATIO = env.float("ARCHIVE_MAX_RATIO", default=100)
ARCHIVE_MAX_ENTRIES = env.int("ARCHIVE_MAX_ENTRIES", default=50_000)
# UID root for objects RelayPACS creates (photos converted to Secondary Capture).
DICOM_UID_ROOT = env.str("DICOM_UID_ROOT", default="1.2.826.0.1.3680043.8.498.")
# Add the clinic's note and service level to each study sent, as a Basic Text SR of its
# own series (uploads/clinical_object.py), so a radiologist reading in the PACS sees them.
PACS_CLINICAL_NOTES_OBJECT = env.bool("PACS_CLINICAL_NOTES_OBJECT", default=True)

# --- PACS -----------------------------------------------------------------------------
PACS_DICOMWEB_URL = env.str("PACS_DICOMWEB_URL", default="")
PACS_ORTHANC_URL = env.str("PACS_ORTHANC_URL", default="")
PACS_EMBEDDED = not PACS_DICOMWEB_URL and not PACS_ORTHANC_URL
PACS_EMBEDDED_PORT = env.int("PACS_EMBEDDED_PORT", default=8042)
PACS_EMBEDDED_DICOM_PORT = env.int("PACS_EMBEDDED_DICOM_PORT", default=4242)
if PACS_EMBEDDED:
    PACS_DICOMWEB_URL = f"http://127.0.0.1:{PACS_EMBEDDED_PORT}/dicom-web"
    PACS_ORTHANC_URL = f"http://127.0.0.1:{PACS_EMBEDDED_PORT}"
PACS_NAME = env.str("PACS_NAME", default="default")
PACS_USERNAME = env.str("PACS_USERNAME", default="")
PACS_PASSWORD = env.str("PACS_PASSWORD", default="")
if env.str("PACS_PASSWORD_FILE", default=""):
    PACS_PASSWORD = Path(env.str("PACS_PASSWORD_FILE")).read_text().strip()
PACS_TOKEN = env.str("PACS_TOKEN", default="")
PACS_CA_BUNDLE = env.str("PACS_CA_BUNDLE", default="")
PACS_CLIENT_CERT = env.str("PACS_CLIENT_CERT", default="")
PACS_CLIENT_KEY = env.str("PACS_CLIENT_KEY", default="")
PACS_TIMEOUT_SECONDS = env.float("PACS_TIMEOUT_SECONDS", default=120)
# "failover": the first destination that takes the study; "all": every destination.
PACS_MODE = env.str("PACS_MODE", default="failover")
# STOW-RS batches bounded in bytes: big enough to amortise a request, small enough that a
# batch on a slow link finishes well inside the per-request timeout.
PACS_STOW_BATCH_BYTES = env.int("PACS_STOW_BATCH_BYTES", default=50 * 1024 * 1024)
# STOW-RS batches on the wire at once: while the PACS stores one batch, the next one is
# already arriving (Orthanc here took 3.8 s per GB with two against 6.3 s with one). Two
# keep it busy; each more costs a connection and one read block, never a batch in memory.
PACS_STOW_IN_FLIGHT = env.int("PACS_STOW_IN_FLIGHT", default=2)
PACS_RETRY_WINDOW = timedelta(days=env.float("PACS_RETRY_WINDOW_DAYS", default=7))
PACS_RETRY_BASE_SECONDS = env.float("PACS_RETRY_BASE_SECONDS", default=30)
PACS_RETRY_MAX_SECONDS = env.float("PACS_RETRY_MAX_SECONDS", default=3600)

# --- Reports --------------------------------------------------------------------------
# Signed reports and their PDFs: a store of their own, never swept with upload bytes, and
# part of every backup of DATA_DIR.
REPORT_STORAGE_DIR = Path(env.str("REPORT_STORAGE_DIR", default=str(DATA_DIR / "reports")))
# How often beat asks the PACS for reports written in the hospital's own systems.
REPORT_SYNC_SECONDS = env.int("REPORT_SYNC_SECONDS", default=300)
# Report objects are looked for only in series of these modalities (SR documents are
# always SR; encapsulated PDFs are DOC or OT); empty: every series (slow on a PACS that
# matches SOP classes by reading instance files).
REPORT_SYNC_SERIES_MODALITIES = env.list(
    "REPORT_SYNC_SERIES_MODALITIES", default=["SR", "DOC", "OT"]
)
# The radiologist's worklist (/reports/) marks a STAT study waiting longer than this.
REPORT_STAT_ALERT_MINUTES = env.int("REPORT_STAT_ALERT_MINUTES", default=30)
# The hospital's image viewer, with {study_uid} where the Study Instance UID goes, e.g.
# Orthanc Explorer 2 "https://pacs.example.org/ui/app/#/filtered-studies?StudyInstanceUID={study_uid}"
# or OHIF "https://viewer.example.org/viewer?StudyInstanceUIDs={study_uid}"; empty: no link.
PACS_VIEWER_URL = env.str("PACS_VIEWER_URL", default="")
CELERY_BEAT_SCHEDULE["reports-sync"] = {
    "task": "reports.tasks.reports_sync_task",
    "schedule": REPORT_SYNC_SECONDS,
}

# --- Notifications (live events) ---------------------------------------------------------
# With Redis, channels-redis wakes the web processes as soon as an event commits; without
# it (the embedded default) each web process checks the database for its connected users
# every NOTIFICATIONS_POLL_SECONDS. The database is the truth either way (docs/notifications.md);
# with Redis the check is only the safety net for a wake-up the channel layer dropped.
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        # channels-redis's blocking reads (BZPOPMIN) last 5 s: on top.
                        "socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS + 5,
                        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
                    }
                ],
                "prefix": "relaypacs:channels:",
            },
        }
    }
NOTIFICATIONS_POLL_SECONDS = env.float(
    "NOTIFICATIONS_POLL_SECONDS", default=5.0 if REDIS_URL else 0.2
)
# Mobile NATs drop idle connections after 30 s or more: a message every 25 s keeps them.
NOTIFICATIONS_HEARTBEAT_SECONDS = env.float("NOTIFICATIONS_HEARTBEAT_SECONDS", default=25)
# How soon an open stream notices that its session was revoked (sign-out, an administrator).
NOTIFICATIONS_SESSION_CHECK_SECONDS = env.float("NOTIFICATIONS_SESSION_CHECK_SECONDS", default=10)
# Events older than 7 days, used tickets and old read notifications: hourly.
CELERY_BEAT_SCHEDULE["notifications-prune"] = {
    "task": "notifications.tasks.notifications_prune_task",
    "schedule": 3600,
}
# --- Web Push (docs/notifications.md, "Web Push") ---
# The VAPID key pair that signs every push: VAPID_PRIVATE_KEY (or VAPID_PRIVATE_KEY_FILE),
# PEM or base64url; without it one is made once in DATA_DIR/push (production settings
# never make one: they take it from the environment or leave Web Push off).
VAPID_PRIVATE_KEY = _env_or_file("VAPID_PRIVATE_KEY")
WEB_PUSH_KEY_DIR = DATA_DIR / "push"
WEB_PUSH_KEYS_FROM_DATA_DIR = True
# The contact push services see (mailto: or https:); default: PUBLIC_BASE_URL if it is
# https, else DEFAULT_FROM_EMAIL's address.
VAPID_SUBJECT = env.str("VAPID_SUBJECT", default="")
WEB_PUSH_ENABLED = env.bool("WEB_PUSH_ENABLED", default=True)
# Push services only take https endpoints; tests point subscriptions at a local http one.
WEB_PUSH_ALLOW_INSECURE_ENDPOINTS = env.bool("WEB_PUSH_ALLOW_INSECURE_ENDPOINTS", default=False)
# A push waits this long at the push service for a device that is off (its `TTL`).
WEB_PUSH_TTL_SECONDS = env.int("WEB_PUSH_TTL_SECONDS", default=24 * 3600)

# --- Metrics (GET /metrics, relaypacs.metrics) -------------------------------------------
# With neither set, only this machine (loopback) may scrape: `serve` binds every interface.
# Production settings require one of them (METRICS_REQUIRE_AUTH). A worker's own server
# (METRICS_WORKER_PORT) checks the same two and always answers loopback.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
if env.str("METRICS_TOKEN_FILE", default=""):
    METRICS_TOKEN = Path(env.str("METRICS_TOKEN_FILE")).read_text().strip()
# Addresses or networks (CIDR) allowed to scrape without the token, e.g. 10.0.0.0/8.
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=[])
METRICS_REQUIRE_AUTH = env.bool("METRICS_REQUIRE_AUTH", default=False)
# A Celery worker started on its own (not by `serve`, e.g. its own container) serves its
# counters on this port when set; it needs a PROMETHEUS_MULTIPROC_DIR of its own.
METRICS_WORKER_PORT = env.int("METRICS_WORKER_PORT", default=0)
# Gauges computed at scrape time; each app's collector lives in its own metrics.py.
METRICS_COLLECTORS = [
    "relaypacs.metrics.RuntimeCollector",
    "uploads.metrics.UploadsCollector",
    "pacs.metrics.PacsCollector",
    "reports.metrics.ReportsCollector",
]
# Beat's heartbeat (relaypacs_beat_heartbeat_timestamp_seconds): its age tells beat stopped.
BEAT_HEARTBEAT_SECONDS = env.int("BEAT_HEARTBEAT_SECONDS", default=30)
CELERY_BEAT_SCHEDULE["relaypacs-beat-heartbeat"] = {
    "task": "relaypacs.metrics.beat_heartbeat",
    "schedule": BEAT_HEARTBEAT_SECONDS,
}

# --- Logging (no patient data: only ids, counts and codes are logged) -------------------
# "text" (readable, the default for `make run`) or "json": one object per line with the
# request id (also in the Celery tasks a request starts) and the upload id.
LOG_FORMAT = env.str("LOG_FORMAT", default="text")
LOGGING = logging_config(log_format=LOG_FORMAT, level=env.str("LOG_LEVEL", default="INFO"))

# --- Errors to Sentry (relaypacs.sentry: Django and Celery, no patient data) ----------------
SENTRY_DSN = env.str("SENTRY_DSN", default="")
if env.str("SENTRY_DSN_FILE", default=""):
    SENTRY_DSN = Path(env.str("SENTRY_DSN_FILE")).read_text().strip()
sentry_init(
    dsn=SENTRY_DSN,
    environment=env.str("SENTRY_ENVIRONMENT", default="production"),
    release=env.str("SENTRY_RELEASE", default="") or f"relaypacs@{SPECTACULAR_SETTINGS['VERSION']}",
    traces_sample_rate=env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0),
)

STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# --- PWA ---------------------------------------------------------------------------------
# The built PWA (frontend/dist, made by `npm run build`) is served at / by WhiteNoise, so the
# app and the API share one origin.
FRONTEND_DIST = BASE_DIR / "frontend" / "dist"
WHITENOISE_ROOT = FRONTEND_DIST if FRONTEND_DIST.is_dir() else None
WHITENOISE_INDEX_FILE = True
