"""Benchmark variant of the embedded default: the filesystem broker polled every 0.1 s.

kombu's filesystem transport looks for new messages once a second, and an upload waits
for two messages (process, then forward) between complete and completed. Started with
``DJANGO_SETTINGS_MODULE=bench.settings_fast_broker``; not a product setting.
"""

from relaypacs.settings.dev import *  # noqa: F403
from relaypacs.settings.dev import CELERY_BROKER_TRANSPORT_OPTIONS

# A tenth of kombu's default: one stat of the broker folder every 100 ms is nothing.
CELERY_BROKER_TRANSPORT_OPTIONS = {**CELERY_BROKER_TRANSPORT_OPTIONS, "polling_interval": 0.1}
