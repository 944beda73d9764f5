"""System checks: a PACS configuration that cannot work fails at start-up, not mid-upload."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register


@register()
def pacs_settings_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from pacs.selectors import PACS_MODES

    problems: list[CheckMessage] = []
    if str(settings.PACS_MODE).strip().lower() not in PACS_MODES:
        problems.append(
            Error(
                f"PACS_MODE is {settings.PACS_MODE!r}.",
                hint=f"Set PACS_MODE to one of: {', '.join(PACS_MODES)}.",
                id="pacs.E001",
            )
        )
    if settings.PACS_STOW_BATCH_BYTES <= 0:
        problems.append(
            Error(
                "PACS_STOW_BATCH_BYTES must be more than zero.",
                hint="The default, 50 MB, suits most links.",
                id="pacs.E002",
            )
        )
    if settings.PACS_CLIENT_KEY and not settings.PACS_CLIENT_CERT:
        problems.append(
            Error(
                "PACS_CLIENT_KEY is set without PACS_CLIENT_CERT.",
                hint="Set the client certificate that goes with the key.",
                id="pacs.E003",
            )
        )
    return problems
