"""The VAPID key pair: made once into DATA_DIR and kept across restarts (also when several
processes start together), or taken from the environment; production never makes one."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from notifications import vapid
from notifications.clients.webpush import VAPID_JWT_LIFETIME_SECONDS, vapid_claims

REPO = Path(__file__).resolve().parents[2]
PRINT_KEY = (
    "from notifications.vapid import vapid_keys\n"
    "keys = vapid_keys()\n"
    "print('KEY', keys.public_key if keys else 'OFF', keys.subject if keys else '')\n"
)


def _env(data_dir: Path, **changes: str | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAPID_", "WEB_PUSH_")) and k != "DJANGO_SETTINGS_MODULE"
    }
    env.update(DJANGO_SETTINGS_MODULE="relaypacs.settings.test", DATA_DIR=str(data_dir))
    env.update({k: v for k, v in changes.items() if v is not None})
    return env


def _start(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-c", PRINT_KEY],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _key_of(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return next(line.split()[1] for line in out.splitlines() if line.startswith("KEY"))


def _raw_private(key: ec.EllipticCurvePrivateKey) -> str:
    return vapid.b64url_encode(key.private_numbers().private_value.to_bytes(32, "big"))


@pytest.fixture
def fresh_cache():
    vapid._cache.clear()
    yield
    vapid._cache.clear()


def test_the_key_is_made_once_private_to_the_server_and_kept_across_restarts(
    settings, tmp_path, fresh_cache
):
    settings.VAPID_PRIVATE_KEY = ""
    settings.WEB_PUSH_KEY_DIR = tmp_path / "push"
    first = vapid.vapid_keys()
    assert first is not None
    key_file = tmp_path / "push" / vapid.KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    vapid._cache.clear()  # a restart of this process
    again = vapid.vapid_keys()
    assert again is not None and again is not first and again.public_key == first.public_key
    # A new process on the same DATA_DIR (the worker, a restart of serve) reads the same.
    assert _key_of(_start(_env(tmp_path))) == first.public_key
    assert sorted(p.name for p in key_file.parent.iterdir()) == [vapid.KEY_FILE_NAME]


def test_processes_starting_together_agree_on_one_key(tmp_path):
    processes = [_start(_env(tmp_path)) for _ in range(4)]
    keys = {_key_of(process) for process in processes}
    assert len(keys) == 1
    assert sorted(p.name for p in (tmp_path / "push").iterdir()) == [vapid.KEY_FILE_NAME]


def test_the_key_can_come_from_the_environment_or_a_file(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    expected = vapid.public_key_text(key.public_key())
    raw = _start(_env(tmp_path, VAPID_PRIVATE_KEY=_raw_private(key)))
    pem_file = tmp_path / "vapid.pem"
    pem_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    from_file = _start(_env(tmp_path, VAPID_PRIVATE_KEY_FILE=str(pem_file)))
    assert _key_of(raw) == expected
    assert _key_of(from_file) == expected
    assert not (tmp_path / "push").exists()  # nothing made in DATA_DIR


def test_a_malformed_key_is_refused_naming_the_variable_not_the_value():
    with pytest.raises(vapid.VapidKeyInvalid) as invalid:
        vapid.private_key_parse("bm90IGEga2V5")
    assert "VAPID_PRIVATE_KEY is malformed" in str(invalid.value)
    assert "bm90IGEga2V5" not in str(invalid.value)
    other_curve = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(vapid.VapidKeyInvalid, match="P-256"):
        vapid.private_key_parse(other_curve.decode())


def test_the_subject_defaults_to_the_https_address_or_the_sender_address(settings):
    settings.PUBLIC_BASE_URL = "https://relay.example.org/app"
    assert vapid.subject_default() == "https://relay.example.org"
    settings.PUBLIC_BASE_URL = "http://localhost:8000"
    settings.DEFAULT_FROM_EMAIL = "RelayPACS <pacs@clinic.example.org>"
    assert vapid.subject_default() == "mailto:pacs@clinic.example.org"
    assert vapid.subject_is_valid("mailto:relaypacs@localhost")
    assert not vapid.subject_is_valid("https://relay.example.org/path")
    assert not vapid.subject_is_valid("relay@example.org")


def test_the_jwt_expires_twelve_hours_ahead_within_rfc_8292s_24():
    now = time.time()
    claims = vapid_claims(
        endpoint="https://fcm.googleapis.com/fcm/send/abc", subject="mailto:a@b.org", now=now
    )
    assert claims == {
        "aud": "https://fcm.googleapis.com",
        "exp": int(now) + 12 * 3600,
        "sub": "mailto:a@b.org",
    }
    assert VAPID_JWT_LIFETIME_SECONDS <= 24 * 3600


def _production(tmp_path: Path, **changes: str | None) -> subprocess.CompletedProcess[str]:
    env = _env(
        tmp_path,
        DJANGO_SETTINGS_MODULE="relaypacs.settings.production",
        SECRET_KEY="x" * 64,
        ALLOWED_HOSTS="relay.example.org",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres",
        TRUSTED_PROXY_COUNT="1",
        PUBLIC_BASE_URL="https://relay.example.org",
    )
    env.pop("DEBUG", None)
    env.update({k: v for k, v in changes.items() if v is not None})
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", PRINT_KEY],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_takes_the_key_from_the_environment_and_never_makes_one(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    configured = _production(tmp_path, VAPID_PRIVATE_KEY=_raw_private(key))
    assert configured.returncode == 0, configured.stderr
    assert f"KEY {vapid.public_key_text(key.public_key())} https://relay.example.org" in (
        configured.stdout
    )
    unset = _production(tmp_path)
    assert unset.returncode == 0, unset.stderr
    assert "KEY OFF" in unset.stdout
    assert not (tmp_path / "push").exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("VAPID_PRIVATE_KEY", "bm90IGEga2V5"), ("VAPID_SUBJECT", "relay-admin@clinic.test")],
)
def test_production_stops_at_a_malformed_vapid_variable_naming_it(tmp_path, variable, value):
    result = _production(tmp_path, **{variable: value})
    assert result.returncode != 0
    assert f"The environment variable {variable} is malformed" in result.stderr
    assert value not in result.stderr.split("is malformed", 1)[1]


@pytest.mark.django_db
def test_a_key_folder_that_cannot_be_written_turns_push_off_with_one_logged_sentence(
    client, signed_in, settings, tmp_path, fresh_cache, caplog
):
    """A read-only DATA_DIR (here: its push folder under a file, the same OSError as a
    read-only or link-less file system): push is off, the status says so, never a 500."""
    from notifications import push

    (tmp_path / "not-a-folder").write_text("")
    settings.VAPID_PRIVATE_KEY = ""
    settings.WEB_PUSH_KEY_DIR = tmp_path / "not-a-folder" / "push"
    push._reported.clear()
    with caplog.at_level("ERROR", logger="notifications.push"):
        for _ in range(3):
            response = client.get("/api/v1/notifications/push-subscriptions", **signed_in.headers)
            assert response.status_code == 200, response.content
            assert response.json()["enabled"] is False
    off = [r for r in caplog.records if "Web Push is off" in r.getMessage()]
    assert len(off) == 1
    assert "cannot be made or read" in off[0].getMessage()


def test_production_refuses_to_start_with_insecure_push_endpoints_allowed(tmp_path):
    result = _production(tmp_path, WEB_PUSH_ALLOW_INSECURE_ENDPOINTS="true")
    assert result.returncode != 0
    assert "WEB_PUSH_ALLOW_INSECURE_ENDPOINTS is for tests only" in result.stderr
