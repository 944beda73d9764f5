"""Errors reach Sentry without patient data: a local HTTP sink stands in for Sentry and
reads what sentry-sdk really sends."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sentry_sdk

from relaypacs.sentry import FILTERED, scrub_breadcrumb, scrub_event, sentry_init

PATIENT = "QUIXOTE^DULCINEA"
FILE_PATH = "/data/uploads/3f2c/KNEE_QUIXOTE_LEFT_001.dcm"
ENTRY = "CD/DICOMDIR/QUIXOTE_ENTRY_07"


class SentrySink:
    """What a Sentry server would receive: every envelope, decompressed."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.arrived = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "br":
                    import brotli  # type: ignore[import-not-found]

                    body = brotli.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                sink.bodies.append(body)
                sink.arrived.set()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.server_port}/1"

    def events(self) -> list[dict[str, Any]]:
        found = []
        for body in self.bodies:
            for line in body.split(b"\n"):
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict) and ("exception" in item or "message" in item):
                    found.append(item)
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink() -> Iterator[SentrySink]:
    sink = SentrySink()
    yield sink
    sentry_sdk.get_client().close(timeout=2)
    sentry_sdk.init()  # no DSN: nothing is sent by the next tests
    sink.close()


def read_study_file(path: str, patient_name: str) -> None:
    entry_name = ENTRY
    raise ValueError(f"cannot read {path} ({entry_name}) for {patient_name}")


def seeded_failure() -> None:
    try:
        read_study_file(FILE_PATH, PATIENT)
    except ValueError:
        sentry_sdk.add_breadcrumb(category="query", message=f"SELECT 1 WHERE name = '{PATIENT}'")
        sentry_sdk.add_breadcrumb(
            category="upload", message=f"opened {FILE_PATH}", data={"patient_name": PATIENT}
        )
        sentry_sdk.add_breadcrumb(category="upload", message="upload 42 processed", data={"n": 3})
        sentry_sdk.capture_exception()
    sentry_sdk.flush(timeout=10)


def assert_clean(sink: SentrySink) -> dict[str, Any]:
    assert sink.arrived.wait(10), "nothing reached the sink"
    sent = b"".join(sink.bodies).decode(errors="replace")
    for forbidden in (PATIENT, "QUIXOTE", "DULCINEA", FILE_PATH, "KNEE_", ENTRY, "3f2c"):
        assert forbidden not in sent, forbidden
    (event,) = sink.events()
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "ValueError" and exception["value"] == FILTERED
    functions = [frame["function"] for frame in exception["stacktrace"]["frames"]]
    assert "read_study_file" in functions  # the stack still says where it happened
    return event


def test_a_seeded_exception_arrives_without_its_locals_patient_name_or_file_path(
    sink: SentrySink,
) -> None:
    # Local variables collected on purpose: the scrubber, not only the setting, removes them.
    sentry_sdk.init(
        dsn=sink.dsn,
        include_local_variables=True,
        before_send=scrub_event,  # type: ignore[arg-type]
        before_breadcrumb=scrub_breadcrumb,  # type: ignore[arg-type]
    )
    seeded_failure()
    event = assert_clean(sink)
    for frame in event["exception"]["values"][0]["stacktrace"]["frames"]:
        assert "vars" not in frame
    crumbs = event["breadcrumbs"]["values"]
    assert [c.get("message") for c in crumbs] == [FILTERED, "upload 42 processed"]
    assert crumbs[0]["data"] == {"patient_name": FILTERED}


def test_the_products_sentry_configuration_sends_no_patient_data(sink: SentrySink) -> None:
    sentry_init(dsn=sink.dsn, environment="test", release="relaypacs@test", traces_sample_rate=0)
    seeded_failure()
    event = assert_clean(sink)
    assert event["release"] == "relaypacs@test" and event["environment"] == "test"


def test_request_bodies_cookies_and_headers_are_removed() -> None:
    event = scrub_event(
        {
            "request": {
                "url": f"https://relay.example.org/api/v1/upload/init?name={PATIENT}",
                "data": {"files": [{"name": "KNEE_QUIXOTE_LEFT_001.dcm"}]},
                "cookies": {"sessionid": "x"},
                "query_string": f"name={PATIENT}",
                "headers": {"Authorization": "Bearer secret", "User-Agent": "phone"},
            },
            "extra": {"manifest": {"entries": [ENTRY]}, "count": 3, "where": FILE_PATH},
            "user": {"ip_address": "10.0.0.1"},
            "logentry": {"message": "could not read %s", "params": [FILE_PATH]},
        }
    )
    assert json.dumps(event).count("QUIXOTE") == 0
    assert event["request"] == {
        "url": "https://relay.example.org/api/v1/upload/init",
        "headers": {"User-Agent": "phone"},
    }
    assert event["extra"] == {"manifest": {"entries": FILTERED}, "count": 3, "where": FILTERED}
    assert "user" not in event and "params" not in event["logentry"]


def test_the_settings_start_sentry_only_with_a_dsn(sink: SentrySink) -> None:
    code = (
        "import django, sentry_sdk; django.setup(); c = sentry_sdk.get_client(); "
        "print(c.dsn, c.options['release'], c.options['include_local_variables'])"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SENTRY_")}
    environ["DJANGO_SETTINGS_MODULE"] = "relaypacs.settings.test"

    def started(**extra: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", code],
            env={**environ, **extra},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.strip()

    assert started().startswith("None")
    assert started(SENTRY_DSN=sink.dsn) == f"{sink.dsn} relaypacs@1.0.0 False"
