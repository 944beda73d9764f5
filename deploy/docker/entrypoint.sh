#!/bin/sh
# The one entry point of the RelayPACS image: `web`, `worker`, `backup-worker`, `beat` or
# `migrate` (docker-compose.yml runs each as its own service); anything else runs as given,
# e.g. `docker-compose run --rm web python manage.py createsuperuser`.
set -eu

# docker-compose.yml gives optional settings as ${NAME:-}: set but empty when .env leaves
# them out. The settings read these empty otherwise than unset (a queue named "", a Sentry
# release of none), so an empty one is unset here, for every command below.
for name in CELERY_QUEUE CELERY_BACKUP_QUEUE SENTRY_RELEASE; do
    if [ -z "$(printenv "$name" || true)" ]; then
        unset "$name"
    fi
done
# The queues as relaypacs/settings/base.py names them (CELERY_TASK_DEFAULT_QUEUE and
# CELERY_BACKUP_QUEUE, the same defaults; relaypacs/tests/test_deploy_compose.py checks
# that the workers consume what the settings route to).
pipeline_queue="${CELERY_QUEUE:-celery}"
backup_queue="${CELERY_BACKUP_QUEUE:-$pipeline_queue-backups}"

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
        set -- python -m celery -A relaypacs worker --loglevel=INFO \
            --concurrency="${WORKER_CONCURRENCY:-2}" --hostname="worker@%h"
        # WORKER_QUEUES (comma-separated): the queues it consumes. Unset, every queue of
        # the product, the backup's too, for a worker run alone; the compose stack gives
        # it CELERY_QUEUE and runs backups on `backup-worker`.
        if [ -n "${WORKER_QUEUES:-}" ]; then
            set -- "$@" --queues="$WORKER_QUEUES"
        fi
        exec "$@"
        ;;
    backup-worker)
        metrics_dir_reset
        # The daily backup's own worker, as `manage.py serve` runs it: only its queue, one
        # task at a time in one process, so an hour-long backup holds none of the
        # pipeline's slots. --concurrency=1: the solo pool runs one task anyway, but the
        # broker prefetch is concurrency x CELERY_WORKER_PREFETCH_MULTIPLIER, and a task
        # reserved behind a running backup would wait for it unseen by another worker.
        exec python -m celery -A relaypacs worker --loglevel=INFO \
            --pool=solo --concurrency=1 --hostname="backups@%h" --queues="$backup_queue"
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
