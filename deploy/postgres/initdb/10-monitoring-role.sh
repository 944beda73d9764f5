#!/bin/sh
# The read-only role of postgres-exporter (docker-compose.yml): a member of pg_monitor, so
# it reads the statistics views (pg_stat_database, pg_stat_activity, pg_settings...) and
# nothing of the product's tables; its own password, from the secret file
# POSTGRES_MONITOR_PASSWORD_FILE, never the database owner's.
#
# The postgres image runs this once, when its data directory is new. On an existing
# database run it by hand (idempotent: it creates the role or sets its password again):
#   docker-compose exec db sh /docker-entrypoint-initdb.d/10-monitoring-role.sh
#
# No `set -u` and no `exit`: the image's entrypoint sources a script that is not
# executable, and both would change or end the entrypoint itself.
set -e

monitor_role="${POSTGRES_MONITOR_USER:-relaypacs_monitor}"
password_file="${POSTGRES_MONITOR_PASSWORD_FILE:-/run/secrets/postgres_monitor_password}"

if [ ! -s "$password_file" ]; then
    echo "The exporter's password file $password_file is missing or empty: make it (docs/compose.md, step 2) and start again." >&2
    false
fi

# The password goes through a psql variable read from the file (not the command line, which
# every process on the host can see) and is quoted by psql (:'password').
PGMON_PASSWORD_FILE="$password_file" psql -v ON_ERROR_STOP=1 -X -q \
    --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    -v role="$monitor_role" <<'SQL'
\set password `tr -d '\n' < "$PGMON_PASSWORD_FILE"`
SELECT format('CREATE ROLE %I', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    CONNECTION LIMIT 5 PASSWORD :'password';
-- A slip in a collector can never write, and a slow view never holds a lock for long.
ALTER ROLE :"role" SET default_transaction_read_only = on;
ALTER ROLE :"role" SET statement_timeout = '15s';
GRANT pg_monitor TO :"role";
SQL
echo "Role $monitor_role (pg_monitor) is ready for postgres-exporter."
