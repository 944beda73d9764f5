#!/bin/sh
# The one entry point of the RelayPACS image: `web`, `worker`, `beat` or `migrate`
# (docker-compose.yml runs each as its own service); anything else runs as given, e.g.
# `docker-compose run --rm web python manage.py createsuperuser`.
set -eu

# prometheus-client's multiprocess mode: every process of this container counts into
# files here and /metrics sums them; emptied at start (files of a previous run would be
# counted again).
metrics_dir_reset() {
    if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
        mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
        find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete
    fi
}

command="${1:-web}"
case "$command" in
    web)
        metrics_dir_reset
        # --no-proxy-headers: the client address is the product's business
        # (TRUSTED_PROXY_COUNT, accounts/clientinfo.py), never uvicorn's guess.
        # --timeout-keep-alive 5: longer than nginx keeps an idle upstream connection
        # (keepalive_timeout 3s, deploy/nginx/relaypacs.conf), so nginx closes it first
        # and never reuses one uvicorn just closed (a 502 for a streamed chunk).
        # --ws-per-message-deflate false: no zlib state per WebSocket for small events
        # (as `manage.py serve` runs it).
        exec python -m uvicorn relaypacs.asgi:application \
            --host 0.0.0.0 --port "${PORT:-8000}" --workers "${WEB_WORKERS:-2}" \
            --no-proxy-headers --no-access-log --timeout-graceful-shutdown 10 \
            --timeout-keep-alive 5 --ws-per-message-deflate false
        ;;
    worker)
        metrics_dir_reset
        exec python -m celery -A relaypacs worker --loglevel=INFO \
            --concurrency="${WORKER_CONCURRENCY:-2}" --hostname="worker@%h"
        ;;
    beat)
        mkdir -p "${DATA_DIR:-/data}/beat"
        exec python -m celery -A relaypacs beat --loglevel=INFO \
            --schedule="${DATA_DIR:-/data}/beat/celerybeat-schedule" \
            --pidfile=
        ;;
    migrate)
        # Start-up validation first: every missing or malformed variable is named.
        python manage.py check --deploy --fail-level WARNING
        exec python manage.py migrate_locked
        ;;
    *)
        exec "$@"
        ;;
esac
