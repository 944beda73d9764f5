"""The product as `make run` starts it, once for this folder's end-to-end tests: two web
workers (so that a scrape must sum processes), JSON logs, and an administrator signed in."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from uploads.tests.product import RunningProduct, admin_access_token, running_product


@dataclass
class SignedInProduct:
    running: RunningProduct
    access: str

    @property
    def base(self) -> str:
        return self.running.base


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory, orthanc: Any) -> Iterator[SignedInProduct]:
    with running_product(
        tmp_path_factory.mktemp("product"),
        orthanc,
        WEB_WORKERS="2",
        LOG_FORMAT="json",
        BEAT_HEARTBEAT_SECONDS="2",
    ) as running:
        yield SignedInProduct(running, admin_access_token(running.base, running.env))
