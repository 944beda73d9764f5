import os

from celery import Celery, signals

from relaypacs.logging_context import celery_logging_connect

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relaypacs.settings.dev")

app = Celery("relaypacs")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# relaypacs.metrics holds beat's heartbeat task (relaypacs is not an installed app).
app.autodiscover_tasks(["relaypacs"], related_name="metrics")
# The request id travels from the request to the tasks it starts (and JSON logs there).
celery_logging_connect()


@signals.worker_init.connect
def _worker_metrics(**kwargs: object) -> None:
    # Imported here, once Django is set up: counting retries, marking exited pool children.
    from django.conf import settings

    from relaypacs.metrics import celery_signals_connect, worker_metrics_server_start

    celery_signals_connect()
    if settings.METRICS_WORKER_PORT:
        worker_metrics_server_start(port=settings.METRICS_WORKER_PORT)
