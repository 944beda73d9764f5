"""A restore's claim of a PostgreSQL target waits for a migration under way (it takes
migrate_locked's advisory lock too), then finds the tables the migration made."""

from __future__ import annotations

import psycopg
import pytest

from uploads.management.commands.migrate_locked import MIGRATE_LOCK_ID


@pytest.mark.django_db(transaction=True)
def test_a_restore_claim_waits_for_a_migration_under_way_then_finds_its_tables():
    import threading

    from django.db import connection

    from relaypacs.errors import ApplicationError
    from uploads.management.backups import _restore_claim

    params = connection.get_connection_params()
    with psycopg.connect(
        dbname=params["dbname"],
        host=params.get("host"),
        port=params.get("port"),
        user=params.get("user"),
        autocommit=True,
    ) as migrating:
        migrating.execute("SELECT pg_advisory_lock(%s)", [MIGRATE_LOCK_ID])
        outcome: list[BaseException | None] = []

        def claim() -> None:
            try:
                _restore_claim(seen=None, backup="backup-of-the-test", report_names=[])
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                outcome.append(exc)
            finally:
                connection.close()

        claimer = threading.Thread(target=claim)
        claimer.start()
        claimer.join(timeout=2)
        assert claimer.is_alive() and not outcome, "the claim did not wait for the migration"
        migrating.execute("SELECT pg_advisory_unlock(%s)", [MIGRATE_LOCK_ID])
        claimer.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], ApplicationError), outcome
    assert outcome[0].code == "restore_target_taken"
    assert "tables" in outcome[0].message
