"""The alert rules and the scrape configuration, checked by Debian's promtool: the rules are
valid, and their unit tests (deploy/prometheus/alerts_test.yml) fire and clear every alert."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    assert shutil.which("promtool"), (
        "promtool is missing: apt-get install prometheus (make setup does)"
    )
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def minutes(duration: str) -> int:
    assert duration.endswith("m"), duration
    return int(duration[:-1])


def test_the_alert_rules_are_valid() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_and_clears_in_the_rule_tests() -> None:
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    for alert in alerts:
        evaluations = [
            check
            for test in tests
            for check in test["alert_rule_test"]
            if check["alertname"] == alert
        ]
        firing = [minutes(check["eval_time"]) for check in evaluations if check["exp_alerts"]]
        cleared = [minutes(check["eval_time"]) for check in evaluations if not check["exp_alerts"]]
        assert firing, f"{alert} is never seen firing"
        assert cleared and max(cleared) > min(firing), f"{alert} is never seen clearing"


def test_the_scrape_configuration_is_valid(tmp_path: Path) -> None:
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path / name)
    config = (tmp_path / "prometheus.yml").read_text()
    token = tmp_path / "token"
    token.write_text("a-scrape-token")
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/run/secrets/relaypacs_metrics_token", str(token))
    )
    checked = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_only_the_rule_tests_have_test_in_their_name() -> None:
    assert [p.name for p in PROMETHEUS.iterdir() if "test" in p.name] == ["alerts_test.yml"]


def test_every_relaypacs_job_sends_the_metrics_token() -> None:
    # Production's /metrics and a worker's own server both refuse a scrape without it.
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name in ("relaypacs", "relaypacs-worker"):
        assert jobs[name]["authorization"] == {
            "type": "Bearer",
            "credentials_file": "/run/secrets/relaypacs_metrics_token",
        }, name
