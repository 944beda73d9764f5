#!/usr/bin/env python
import os
import sys


def _database_not_set_up() -> str | None:
    """Where the database is, if it exists but has not been migrated; else None."""
    from django.conf import settings
    from django.db import DatabaseError, connection
    from django.db.migrations.executor import MigrationExecutor

    try:
        executor = MigrationExecutor(connection)
        if not executor.migration_plan(executor.loader.graph.leaf_nodes()):
            return None
    except DatabaseError:
        pass
    database = settings.DATABASES["default"]
    return str(database.get("NAME") or "")


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relaypacs.settings.dev")
    from django.core.management import execute_from_command_line
    from django.db import DatabaseError

    try:
        execute_from_command_line(sys.argv)
    except DatabaseError:
        where = _database_not_set_up()
        if where is None:
            raise
        sys.stderr.write(
            f"The database ({where}) has not been set up yet. Start RelayPACS once with "
            "'make run' (it sets the database up), or run 'manage.py migrate' with the same "
            "DATA_DIR and DATABASE_URL as 'make run', then run this command again.\n"
        )
        sys.exit(1)
