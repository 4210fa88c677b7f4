-- The PostgreSQL role ebk backs up as, with the least privilege it needs.
-- tests/infra/test_ebk_role.py runs this file against a real PostgreSQL 15 and
-- takes physical and logical backups as the role.
--
-- Run it once as a superuser, the password in the psql variable ebk_password
-- (printf is a shell builtin: the password never appears in a process list):
--
--   { printf "\\set ebk_password '%s'\n" "$(cat /etc/ebk/secrets/ebk_db_password)"
--     cat infra/postgres/ebk-role.sql; } | psql -X -v ON_ERROR_STOP=1 -U postgres -d postgres
--
-- Running it again resets the password and the grants.
--   REPLICATION           physical backups: the BASE_BACKUP replication protocol
--   pg_read_all_settings  current_setting('data_directory') (cluster identity, preflight)
--   pg_read_all_data      logical dumps of every database, and pg_dumpall --globals-only
--                         (which reads pg_authid: the roles' password hashes)
--   BYPASSRLS             pg_dump refuses tables with row-level security otherwise
-- Nothing else: no SUPERUSER, no CREATEDB/CREATEROLE, no write access anywhere.

-- Keep the password out of the server log and pg_stat_statements for this session
-- (a placeholder setting when the extension is not loaded).
SET log_statement = 'none';
SET log_min_duration_statement = -1;
SET pg_stat_statements.track_utility = off;

SELECT 'CREATE ROLE ebk'
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'ebk')
\gexec

ALTER ROLE ebk WITH LOGIN REPLICATION BYPASSRLS NOSUPERUSER NOCREATEDB NOCREATEROLE
    PASSWORD :'ebk_password';
GRANT pg_read_all_settings, pg_read_all_data TO ebk;
