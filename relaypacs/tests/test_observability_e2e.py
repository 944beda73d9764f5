"""The product as `make run` starts it, two web workers and a Celery worker, observed from
outside: /metrics sums every process exactly, a full upload fills the pipeline's families,
and the JSON logs carry request ids into the tasks and no patient data."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import yaml
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid

from relaypacs.tests.conftest import SignedInProduct
from uploads.tests.helpers import HttpUploader, content_md5, free_port, iter_file_chunks
from uploads.tests.synthetic import ROOT, write_instance

pytestmark = pytest.mark.e2e

CHUNK = 256 * 1024  # the smallest chunk the API takes: many requests from a small study
PATIENT = "QUIXOTE^DULCINEA"
FILE_STEM = "KNEE_QUIXOTE_LEFT"


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = requests.get(f"{base}/metrics", timeout=60)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def study(directory: Path, *, instances: int, pixel_bytes: int) -> list[Path]:
    """Files whose names and patient name the logs must never show."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(prefix=ROOT), generate_uid(prefix=ROOT)
    paths = []
    for number in range(1, instances + 1):
        path = directory / f"{FILE_STEM}_{number:03d}.dcm"
        write_instance(
            path,
            study_uid=study_uid,
            series_uid=series_uid,
            number=number,
            pixel_bytes=pixel_bytes,
            patient_name=PATIENT,
        )
        paths.append(path)
    return paths


def web_worker_pids(product: SignedInProduct) -> set[int]:
    serve = psutil.Process(product.running.process.pid)
    return {
        p.pid
        for p in serve.children(recursive=True)
        if "spawn_main" in " ".join(p.cmdline()) and "uvicorn" in " ".join(p.parent().cmdline())
    }


def chunk_counts_by_pid(metrics_dir: Path) -> dict[int, float]:
    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[-1])
        for key, number, *_rest in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[1] == "relaypacs_chunks_received_total":
                counts[pid] = counts.get(pid, 0) + number
    return counts


def test_chunk_requests_over_two_web_workers_are_counted_exactly_once(
    product: SignedInProduct, orthanc_clean: Any, tmp_path: Path
) -> None:
    client = HttpUploader(product.base, product.access, CHUNK)
    paths = study(tmp_path / "study", instances=4, pixel_bytes=2 * 1024 * 1024)
    upload = client.init(paths)
    chunks = list(iter_file_chunks(paths, CHUNK))
    total_bytes = sum(len(data) for _, data in chunks)
    assert len(chunks) >= 30
    before = scrape(product.base)

    # Fresh connections from several threads at once: the kernel hands them to both workers.
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda chunk: client.put_chunk(upload, *chunk), chunks))
    assert statuses == [200] * len(chunks)
    index, data = chunks[0]
    assert client.put_chunk(upload, index, data) == 200  # a retry whose answer was lost
    damaged = requests.put(
        f"{product.base}/api/v1/upload/{upload['upload_id']}/chunk?index=1",
        data=chunks[1][1],
        headers={**upload["headers"], "Content-MD5": content_md5(b"other bytes")},
        timeout=30,
    )
    assert damaged.status_code == 422
    refused = requests.put(
        f"{product.base}/api/v1/upload/{upload['upload_id']}/chunk?index=1",
        data=chunks[1][1],
        headers={"Authorization": "Bearer upl_not-a-token", "Content-MD5": content_md5(data)},
        timeout=30,
    )
    assert refused.status_code == 401

    # Several scrapes, whichever worker answers each: the same sums.
    scrapes = [scrape(product.base) for _ in range(4)]
    for after in scrapes:
        delta = {
            outcome: value(after, "relaypacs_chunks_received_total", outcome=outcome)
            - value(before, "relaypacs_chunks_received_total", outcome=outcome)
            for outcome in ("stored", "duplicate", "checksum_mismatch", "conflict", "refused")
        }
        assert delta == {
            "stored": len(chunks),
            "duplicate": 1,
            "checksum_mismatch": 1,
            "conflict": 0,
            "refused": 1,
        }
        assert value(after, "relaypacs_bytes_received_total") - value(
            before, "relaypacs_bytes_received_total"
        ) == pytest.approx(total_bytes)

    metrics_dir = Path(product.running.env["DATA_DIR"]) / "prometheus-multiproc"
    by_pid = chunk_counts_by_pid(metrics_dir)
    workers = web_worker_pids(product)
    counted_by = {pid for pid, n in by_pid.items() if pid in workers and n > 0}
    assert len(counted_by) == 2, (by_pid, workers)
    client.complete(upload)
    assert client.wait(upload, {"completed", "failed"}, timeout=180)["state"] == "completed"


@pytest.fixture(scope="module")
def delivered(product: SignedInProduct, orthanc: Any, tmp_path_factory: pytest.TempPathFactory):
    """One upload from init to the PACS's receipt, through the running product."""
    orthanc.start()
    client = HttpUploader(product.base, product.access, CHUNK)
    paths = study(tmp_path_factory.mktemp("delivered"), instances=3, pixel_bytes=400 * 1024)
    upload = client.init(paths)
    client.send(upload, paths)
    client.complete(upload)
    status = client.wait(upload, {"completed", "failed"}, timeout=180)
    assert status["state"] == "completed", status
    return {"upload": upload, "paths": paths}


def test_a_delivered_upload_fills_the_pipeline_families(
    product: SignedInProduct, delivered: dict[str, Any]
) -> None:
    deadline = time.monotonic() + 60
    while True:
        samples = scrape(product.base)
        stages = {
            stage: value(samples, "relaypacs_upload_stage_seconds_count", stage=stage)
            for stage in ("receive", "process", "forward", "pacs_receipt")
        }
        if all(stages.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert all(n >= 1 for n in stages.values()), stages
    assert value(samples, "relaypacs_uploads", state="completed") >= 1
    assert value(samples, "relaypacs_uploads", state="failed") == 0
    assert (
        value(samples, "relaypacs_stow_request_seconds_count", destination="default", outcome="ok")
        >= 1
    )
    assert value(samples, "relaypacs_qido_request_seconds_count", destination="default") >= 1
    assert value(samples, "relaypacs_pacs_up", destination="default") == 1
    assert value(samples, "relaypacs_celery_queue_depth", queue="celery") >= 0
    heartbeat = value(samples, "relaypacs_beat_heartbeat_timestamp_seconds")
    assert time.time() - heartbeat < 60, heartbeat
    assert (
        value(samples, "relaypacs_upload_storage_size_bytes")
        > value(samples, "relaypacs_upload_storage_free_bytes")
        > 0
    )
    statuses = {
        labels: n
        for (name, labels), n in samples.items()
        if name == "django_http_responses_total_by_status_total"
    }
    assert statuses, "django-prometheus counts requests"


def test_json_logs_carry_the_request_id_into_the_tasks_and_no_patient_data(
    product: SignedInProduct, delivered: dict[str, Any]
) -> None:
    upload_id = delivered["upload"]["upload_id"]
    text = product.running.log.read_text(errors="replace")
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    assert records, text[-2000:]
    loggers = {r["logger"].split(".")[0] for r in records}
    assert {"uvicorn", "celery", "relaypacs", "uploads"} <= loggers, loggers
    # The request that completed the upload (a web worker) started its processing task (the
    # Celery worker): the task's lines carry that request's id.
    received = next(
        r
        for r in records
        if r["message"].startswith("event upload.received") and r["upload_id"] == upload_id
    )
    request_id = received["request_id"]
    assert request_id and not request_id.startswith("task-"), received
    in_tasks = [
        r for r in records if r["request_id"] == request_id and r["process"] != received["process"]
    ]
    assert any(r["upload_id"] == upload_id for r in in_tasks), in_tasks
    for forbidden in [
        PATIENT,
        *PATIENT.split("^"),
        FILE_STEM,
        *(p.name for p in delivered["paths"]),
    ]:
        assert forbidden not in text, forbidden


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "relaypacs-overview.json"
# Panels that must show data once an upload went through (the others may be empty: no
# retries, no reports, no task retries in this run).
CORE_PANELS = {
    "API latency (p50, p95)",
    "Responses by status",
    "Server error rate (5xx)",
    "Chunks by outcome",
    "Upload volume",
    "Uploads by state",
    "Stage time (p95, last hour)",
    "Stuck uploads: oldest waiting",
    "PACS up",
    "STOW-RS latency (p95)",
    "STOW-RS requests by outcome",
    "Celery queue depth",
    "Beat heartbeat age",
    "Upload storage free",
    "Upload storage used",
}


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "RelayPACS Overview"
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


@pytest.fixture
def prometheus(product: SignedInProduct, tmp_path: Path) -> Iterator[str]:
    """Debian's Prometheus with deploy/prometheus/prometheus.yml and its alert rules,
    pointed at the running product and scraping every second."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "relaypacs")
    job.pop("authorization")  # the embedded default answers this machine (127.0.0.1)
    job["static_configs"] = [{"targets": [product.base.removeprefix("http://")]}]
    config["scrape_configs"] = [job]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                if requests.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30).json()
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def wait_for(prometheus: str, expr: str, timeout: float = 90) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        result = query(prometheus, expr)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(1)


def test_a_real_prometheus_scrapes_the_product_and_every_dashboard_query_answers(
    product: SignedInProduct, prometheus: str, orthanc: Any, tmp_path: Path
) -> None:
    assert wait_for(prometheus, 'up{job="relaypacs"} == 1'), "Prometheus never scraped /metrics"
    before = query(prometheus, 'max(relaypacs_uploads{state="completed"})')
    done_before = float(before[0]["value"][1]) if before else 0.0
    orthanc.start()
    client = HttpUploader(product.base, product.access, CHUNK)
    paths = study(tmp_path / "study", instances=3, pixel_bytes=300 * 1024)
    upload = client.init(paths)
    client.send(upload, paths)
    client.complete(upload)
    assert client.wait(upload, {"completed", "failed"}, timeout=180)["state"] == "completed"
    assert wait_for(prometheus, f'max(relaypacs_uploads{{state="completed"}}) > {done_before}')
    assert wait_for(prometheus, "sum(rate(relaypacs_upload_stage_seconds_count[5m])) > 0")

    # A rate needs two samples after the upload: asked again until every core panel
    # answers (a few scrapes, one a second) or the deadline passes.
    core = [(title, expr) for title, expr in dashboard_queries() if title in CORE_PANELS]
    deadline = time.monotonic() + 90
    while True:
        empty = [(title, expr) for title, expr in core if not query(prometheus, expr)]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not empty, empty
    for _title, expr in dashboard_queries():
        query(prometheus, expr)  # every query is valid PromQL, empty or not
    assert {title for title, _ in dashboard_queries()} >= CORE_PANELS

    rules = requests.get(f"{prometheus}/api/v1/rules", timeout=30).json()["data"]["groups"]
    evaluated = [rule for group in rules for rule in group["rules"]]
    assert len(evaluated) >= 7
    assert all(rule["health"] != "err" for rule in evaluated), evaluated
    firing = [rule["name"] for rule in evaluated if rule["state"] == "firing"]
    assert not firing, firing
