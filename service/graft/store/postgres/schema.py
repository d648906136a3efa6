"""The PostgreSQL store's schema, as numbered migrations applied at start.

`MIGRATIONS[v]` takes a database from schema version v to v + 1; an empty database is
version 0, so a fresh one and an old one go through the same steps. `migrate` applies the
missing steps in one transaction under a transaction-level advisory lock, so servers and
workers starting together never race (the second waits, then finds nothing to do), and it
refuses a database whose schema is newer than this code.

The tables are those of the SQLite store at its version 5 (docs/STORE.md), in PostgreSQL's
types: times are `double precision` epoch seconds, flags `boolean`, enums their integers,
plans, metrics, cards and payloads JSON text (`graft.store.codec` is shared). Text that is
sorted or paged on (names, tenants, aliases) is `COLLATE "C"`: byte order, as in SQLite,
whatever the database's default collation. `graft_now()` is the store's clock: the
database's transaction time, unless a test set `graft.now` for its transaction.
"""

from __future__ import annotations

import psycopg
from psycopg.rows import TupleRow

from graft.domain import DEFAULT_TENANT
from graft.errors import FailedPrecondition

# An arbitrary constant: the advisory lock that serialises migrations.
MIGRATION_LOCK = 0x67726166_74000001

MIGRATIONS: list[tuple[str, ...]] = [
    # 0 -> 1: everything the SQLite store has at its version 5.
    (
        """CREATE FUNCTION graft_now() RETURNS double precision LANGUAGE sql STABLE AS $$
            SELECT COALESCE(
                NULLIF(current_setting('graft.now', true), '')::double precision,
                extract(epoch FROM now())::double precision)
        $$""",
        f"""CREATE TABLE jobs (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- FIFO claims, paging
            job_id text NOT NULL UNIQUE,
            tenant text COLLATE "C" NOT NULL DEFAULT '{DEFAULT_TENANT}',
            model_name text COLLATE "C" NOT NULL,
            dataset_uri text NOT NULL DEFAULT '',
            dataset_id text NOT NULL DEFAULT '',
            plan_json text NOT NULL,
            request_id text NOT NULL DEFAULT '',
            request_hash text NOT NULL DEFAULT '',
            config_json text NOT NULL DEFAULT '',
            state smallint NOT NULL,
            create_time double precision NOT NULL,
            start_time double precision,
            end_time double precision,
            error text NOT NULL DEFAULT '',
            error_json text NOT NULL DEFAULT '',
            model_version integer NOT NULL DEFAULT 0,
            attempts integer NOT NULL DEFAULT 0,
            cancel_requested boolean NOT NULL DEFAULT false,
            advise_first boolean NOT NULL DEFAULT false,
            plan_resolved boolean NOT NULL DEFAULT true,
            last_sequence bigint NOT NULL DEFAULT 0,
            skipped_files integer NOT NULL DEFAULT 0,
            metrics_json text NOT NULL DEFAULT '',
            lease_owner text NOT NULL DEFAULT '',
            lease_expires double precision NOT NULL DEFAULT 0
        )""",
        "CREATE UNIQUE INDEX jobs_request_id ON jobs (tenant, request_id) WHERE request_id <> ''",
        "CREATE INDEX jobs_state ON jobs (state, seq)",
        "CREATE INDEX jobs_tenant ON jobs (tenant, seq)",
        "CREATE INDEX jobs_model_state ON jobs (model_name, state)",
        "CREATE INDEX jobs_dataset_id ON jobs (dataset_id) WHERE dataset_id <> ''",
        """CREATE TABLE events (
            job_id text NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
            sequence bigint NOT NULL,
            time double precision NOT NULL,
            payload_json text NOT NULL,
            PRIMARY KEY (job_id, sequence)
        )""",
        """CREATE TABLE tasks (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- FIFO claims
            task_id text NOT NULL UNIQUE,
            kind smallint NOT NULL,
            state smallint NOT NULL,
            request_json text NOT NULL,
            create_time double precision NOT NULL,
            deadline double precision NOT NULL DEFAULT 0,
            result_json text NOT NULL DEFAULT '',
            error_json text NOT NULL DEFAULT '',
            cancel_requested boolean NOT NULL DEFAULT false,
            lease_owner text NOT NULL DEFAULT '',
            lease_expires double precision NOT NULL DEFAULT 0,
            worker_pid integer NOT NULL DEFAULT 0,
            start_time double precision,
            end_time double precision
        )""",
        "CREATE INDEX tasks_state ON tasks (state, kind, seq)",
        """CREATE TABLE workers (
            worker_id text COLLATE "C" PRIMARY KEY,
            pid integer NOT NULL,
            host text NOT NULL,
            last_heartbeat double precision NOT NULL,
            info_json text NOT NULL
        )""",
        f"""CREATE TABLE model_versions (
            tenant text COLLATE "C" NOT NULL DEFAULT '{DEFAULT_TENANT}',
            name text COLLATE "C" NOT NULL,
            version integer NOT NULL,
            create_time double precision NOT NULL,
            job_id text NOT NULL,
            backbone text NOT NULL,
            labels_json text NOT NULL,
            sha256 text NOT NULL,
            card_json text NOT NULL,
            artifact_dir text NOT NULL,
            metrics_json text NOT NULL DEFAULT '',
            PRIMARY KEY (tenant, name, version)
        )""",
        """CREATE TABLE model_aliases (
            tenant text COLLATE "C" NOT NULL,
            name text COLLATE "C" NOT NULL,
            alias text COLLATE "C" NOT NULL,
            version integer NOT NULL,
            PRIMARY KEY (tenant, name, alias),
            FOREIGN KEY (tenant, name, version) REFERENCES model_versions (tenant, name, version)
        )""",
        f"""CREATE TABLE uploads (
            dataset_id text COLLATE "C" PRIMARY KEY,
            tenant text COLLATE "C" NOT NULL DEFAULT '{DEFAULT_TENANT}',
            path text NOT NULL,
            size_bytes bigint NOT NULL,
            fingerprint text NOT NULL,
            create_time double precision NOT NULL,
            filename text NOT NULL DEFAULT '',
            extracted_bytes bigint NOT NULL DEFAULT 0,
            last_used double precision NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX uploads_tenant ON uploads (tenant, create_time)",
        """CREATE TABLE api_keys (
            key_id text COLLATE "C" PRIMARY KEY,
            token_hash text NOT NULL UNIQUE,  -- sha256 of the token, hex; never the token
            tenant text NOT NULL,
            admin boolean NOT NULL DEFAULT false,
            name text NOT NULL DEFAULT '',
            create_time double precision NOT NULL,
            revoke_time double precision
        )""",
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: psycopg.Connection[TupleRow], name: str) -> tuple[int, int]:
    """Bring the database of `conn` (autocommit) to the newest version; returns the
    versions found and now. FailedPrecondition when the database is newer than this code."""
    target = len(MIGRATIONS)  # read once: a test may give the module another list
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " one boolean PRIMARY KEY DEFAULT true CHECK (one), version integer NOT NULL)"
        )
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        found = 0 if row is None else int(row[0])
        if found > target:
            raise FailedPrecondition(
                f"job store {name} has schema version {found}, newer than this Graft"
                f" understands ({target}); upgrade Graft"
            )
        for version in range(found, target):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
        if found < target:
            conn.execute(
                "INSERT INTO schema_version (version) VALUES (%s)"
                " ON CONFLICT (one) DO UPDATE SET version = excluded.version",
                (target,),
            )
    return found, target
