# syntax=docker/dockerfile:1
# The RelayPACS image: the PWA built with Node, then a slim Python runtime that serves it
# with the API, run as a non-root user. One image for every role: docker-compose.yml runs
# it as `web`, `worker`, `beat` and `migrate` (deploy/docker/entrypoint.sh).

# --- Stage 1: the PWA (frontend/dist) ----------------------------------------------------
FROM node:20-bookworm-slim AS pwa
WORKDIR /src/frontend
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY frontend/ ./
RUN npm run build

# --- Stage 2: Python dependencies, built apart so the runtime has no compilers -----------
FROM python:3.11-slim-bookworm AS python-deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

# --- Stage 3: the runtime ----------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime
# libarchive13: RAR and ZIP reading; pango: report PDFs (WeasyPrint); poppler-utils: PDF
# checks; postgresql-client: pg_dump/pg_restore for backups.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libarchive13 libpango-1.0-0 libpangoft2-1.0-0 poppler-utils postgresql-client \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 relaypacs \
    && useradd --system --uid 10001 --gid relaypacs --home-dir /app --shell /usr/sbin/nologin relaypacs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=relaypacs.settings.production \
    DATA_DIR=/data \
    STATIC_ROOT=/app/staticfiles
WORKDIR /app
COPY --from=python-deps /opt/venv /opt/venv
COPY . .
COPY --from=pwa /src/frontend/dist frontend/dist
# Static files are collected into the image (source maps and ReDoc are never served), with
# throw-away development settings: production ones would ask for secrets at build time.
RUN DJANGO_SETTINGS_MODULE=relaypacs.settings.dev DATA_DIR=/tmp/build \
        python manage.py collectstatic --noinput --verbosity 0 --ignore '*.map' --ignore redoc \
    && rm -rf /tmp/build \
    && mkdir -p /data /backups \
    && chown relaypacs:relaypacs /data /backups \
    && chmod 0700 /backups
USER relaypacs
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["/app/deploy/docker/entrypoint.sh"]
CMD ["web"]
