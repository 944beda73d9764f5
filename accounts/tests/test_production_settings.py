"""Production settings, checked in a child process as a deployment would load them."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REQUIRED = ("SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "TRUSTED_PROXY_COUNT", "PUBLIC_BASE_URL")


def production_env(tmp_path, **changes):
    env = {k: v for k, v in os.environ.items() if k not in REQUIRED and k != "DEBUG"}
    env.update(
        DJANGO_SETTINGS_MODULE="relaypacs.settings.production",
        DATA_DIR=str(tmp_path),
        SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="relay.example.org",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres",
        TRUSTED_PROXY_COUNT="1",
        PUBLIC_BASE_URL="https://relay.example.org",
    )
    env.update(changes)
    return {k: v for k, v in env.items() if v is not None}


def manage(env, *args):
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_reports_no_warnings_with_production_settings(tmp_path):
    result = manage(production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("missing", REQUIRED)
def test_a_missing_required_variable_stops_start_up_naming_it(tmp_path, missing):
    result = manage(production_env(tmp_path, **{missing: None}), "check")
    assert result.returncode != 0
    assert f"The environment variable {missing} is not set" in result.stderr


@pytest.mark.parametrize("empty", ["TRUSTED_PROXY_COUNT", "PUBLIC_BASE_URL"])
def test_an_empty_proxy_count_or_public_url_is_missing_too(tmp_path, empty):
    result = manage(production_env(tmp_path, **{empty: ""}), "check")
    assert result.returncode != 0
    assert f"The environment variable {empty} is not set" in result.stderr


def test_no_proxy_is_a_valid_proxy_count_and_links_use_the_public_url(tmp_path):
    script = (
        "from django.conf import settings\n"
        "from accounts.services.mail import password_reset_link\n"
        "from accounts.models import User\n"
        "print('proxies', settings.TRUSTED_PROXY_COUNT)\n"
        "print('link', password_reset_link(user=User(pk=1, password='x')))\n"
    )
    env = production_env(tmp_path, TRUSTED_PROXY_COUNT="0")
    result = manage(env, "shell", "-c", script)
    assert "proxies 0" in result.stdout, result.stderr
    assert "link https://relay.example.org/reset-password?uid=" in result.stdout


def test_secrets_can_come_from_files(tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text(secrets.token_urlsafe(64))
    env = production_env(tmp_path, SECRET_KEY=None, SECRET_KEY_FILE=str(key_file))
    result = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr


def test_a_wildcard_allowed_hosts_is_refused(tmp_path):
    result = manage(production_env(tmp_path, ALLOWED_HOSTS="*"), "check")
    assert result.returncode != 0
    assert "ALLOWED_HOSTS" in result.stderr


def test_responses_carry_hsts_csp_and_redirect_http_to_https(tmp_path):
    script = (
        "from django.test import Client\n"
        "c = Client(HTTP_HOST='relay.example.org')\n"
        "plain = c.get('/api/v1/schema/')\n"
        "print('redirect', plain.status_code, plain.get('Location'))\n"
        "tls = c.get('/api/v1/uploads', secure=True)\n"
        "print('hsts', tls.get('Strict-Transport-Security'))\n"
        "print('csp', tls.get('Content-Security-Policy'))\n"
        "print('auth', tls.status_code)\n"
    )
    result = manage(production_env(tmp_path), "shell", "-c", script)
    out = result.stdout
    assert "redirect 301 https://relay.example.org/api/v1/schema/" in out, result.stderr
    assert "hsts max-age=31536000; includeSubDomains; preload" in out
    assert "default-src 'self'" in out and "frame-ancestors 'none'" in out
    assert "auth 401" in out
