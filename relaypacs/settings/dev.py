"""The embedded default used by ``make run`` and local development."""

from .base import *  # noqa: F403
