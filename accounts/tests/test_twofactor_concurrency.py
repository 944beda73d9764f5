"""The same TOTP code sent twice at the same instant passes once (PostgreSQL row locks)."""

import threading
import time

import pytest
from django.db import connection
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.services import twofactor_verify
from accounts.tests.factories import UserFactory

# Several races, so a pass shows the lock rather than lucky timing.
ROUNDS = 5
JOIN_SECONDS = 30


def code_at(device, step_offset):
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + step_offset * device.step
    return f"{totp.token():06d}"


def verify_twice_at_once(user, code):
    barrier = threading.Barrier(2)
    results = []
    errors = []

    def attempt():
        try:
            barrier.wait(timeout=JOIN_SECONDS)
            results.append(twofactor_verify(user=user, code=code))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_SECONDS)
    assert errors == []
    return sorted(results)


@pytest.mark.django_db(transaction=True)
def test_the_same_code_sent_twice_at_the_same_instant_passes_once():
    user = UserFactory()
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    for _ in range(ROUNDS):
        # Forget the last used step (and the failure the loser caused): the code is fresh.
        TOTPDevice.objects.filter(pk=device.pk).update(last_t=-1, throttling_failure_count=0)
        assert verify_twice_at_once(user, code_at(device, 0)) == [False, True]
