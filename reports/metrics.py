"""Reports' Prometheus metrics, computed at scrape time (exposed by relaypacs.metrics).

Nothing in uploads or pacs imports this module: relaypacs.metrics finds the collector
through settings.METRICS_COLLECTORS.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class ReportsCollector(Collector):
    """Open reports (still waiting for a final result) by status, and the oldest one's age."""

    def collect(self) -> Iterable[Metric]:
        from .models import OPEN_STATUSES, Report

        rows = {
            row["status"]: row
            for row in Report.objects.filter(status__in=OPEN_STATUSES)
            .values("status")
            .annotate(n=Count("pk"), oldest=Min("created_at"))
        }
        open_reports = GaugeMetricFamily(
            "relaypacs_reports_open",
            "Reports waiting for a final result, by status.",
            labels=["status"],
        )
        oldest = GaugeMetricFamily(
            "relaypacs_report_oldest_open_seconds",
            "Age of the oldest open report in each status (0 when none).",
            labels=["status"],
        )
        now = timezone.now()
        for status in OPEN_STATUSES:
            row = rows.get(status)
            open_reports.add_metric([str(status)], row["n"] if row else 0)
            age = (now - row["oldest"]).total_seconds() if row and row["oldest"] else 0.0
            oldest.add_metric([str(status)], age)
        yield open_reports
        yield oldest
