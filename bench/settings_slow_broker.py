"""Benchmark variant of the embedded default: the filesystem broker polled once a second.

kombu's filesystem transport looks for new messages once a second unless told otherwise;
``relaypacs/settings/base.py`` polls every 0.1 s. This variant shows what that setting
saves an upload. Started with ``DJANGO_SETTINGS_MODULE=bench.settings_slow_broker``; not a
product setting.
"""

from relaypacs.settings.dev import *  # noqa: F403
from relaypacs.settings.dev import CELERY_BROKER_TRANSPORT_OPTIONS

# kombu's default polling interval.
CELERY_BROKER_TRANSPORT_OPTIONS = {**CELERY_BROKER_TRANSPORT_OPTIONS, "polling_interval": 1.0}
