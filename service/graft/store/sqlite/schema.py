"""The SQLite store's schema: the tables of a fresh file and the migrations of older ones."""

from __future__ import annotations

from graft.domain import DEFAULT_TENANT

SCHEMA_VERSION = 5

# Applied in one transaction when the file has no schema yet (then _MIGRATIONS[1:]);
# _MIGRATIONS[v] takes a file from schema version v to v + 1.
_SCHEMA = (
    """CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: FIFO claims, newest-first lists
        job_id TEXT NOT NULL UNIQUE,
        model_name TEXT NOT NULL,
        dataset_uri TEXT NOT NULL DEFAULT '',
        dataset_id TEXT NOT NULL DEFAULT '',
        plan_json TEXT NOT NULL,
        request_id TEXT NOT NULL DEFAULT '',
        config_json TEXT NOT NULL DEFAULT '',
        state INTEGER NOT NULL,
        create_time REAL NOT NULL,
        start_time REAL,
        end_time REAL,
        error TEXT NOT NULL DEFAULT '',
        model_version INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        last_sequence INTEGER NOT NULL DEFAULT 0,
        skipped_files INTEGER NOT NULL DEFAULT 0,
        metrics_json TEXT NOT NULL DEFAULT '',
        lease_owner TEXT NOT NULL DEFAULT '',
        lease_expires REAL NOT NULL DEFAULT 0
    )""",
    "CREATE UNIQUE INDEX jobs_request_id ON jobs (request_id) WHERE request_id <> ''",
    "CREATE INDEX jobs_state ON jobs (state, seq)",
    """CREATE TABLE events (
        job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
        sequence INTEGER NOT NULL,
        time REAL NOT NULL,
        payload_json TEXT NOT NULL,
        PRIMARY KEY (job_id, sequence)
    ) WITHOUT ROWID""",
    """CREATE TABLE workers (
        worker_id TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        last_heartbeat REAL NOT NULL,
        info_json TEXT NOT NULL
    )""",
    """CREATE TABLE model_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        create_time REAL NOT NULL,
        job_id TEXT NOT NULL,
        backbone TEXT NOT NULL,
        labels_json TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        card_json TEXT NOT NULL,
        artifact_dir TEXT NOT NULL,
        metrics_json TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (name, version)
    )""",
    """CREATE TABLE model_aliases (
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (name, alias),
        FOREIGN KEY (name, version) REFERENCES model_versions (name, version)
    )""",
    """CREATE TABLE uploads (
        dataset_id TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        create_time REAL NOT NULL
    )""",
)

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 1 -> 2: work moves to the workers. A job may be queued before its plan is resolved
    # (the worker scans the dataset, then resolves or advises); failures keep their kind
    # and field violations; tasks are the short work (Advise, upload checks) the API awaits.
    1: (
        "ALTER TABLE jobs ADD COLUMN advise_first INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN plan_resolved INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE jobs ADD COLUMN error_json TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX jobs_model_state ON jobs (model_name, state)",
        """CREATE TABLE tasks (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- FIFO claims
            task_id TEXT NOT NULL UNIQUE,
            kind INTEGER NOT NULL,
            state INTEGER NOT NULL,
            request_json TEXT NOT NULL,
            create_time REAL NOT NULL,
            deadline REAL NOT NULL DEFAULT 0,
            result_json TEXT NOT NULL DEFAULT '',
            error_json TEXT NOT NULL DEFAULT '',
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT NOT NULL DEFAULT '',
            lease_expires REAL NOT NULL DEFAULT 0,
            worker_pid INTEGER NOT NULL DEFAULT 0,
            start_time REAL,
            end_time REAL
        )""",
        "CREATE INDEX tasks_state ON tasks (state, kind, seq)",
    ),
    # 2 -> 3: tenants and API keys. Every existing row belongs to the default tenant.
    # Request ids and model names become per tenant: the model tables are rebuilt with the
    # tenant in their keys (SQLite cannot change a primary key in place): both new tables
    # are filled before the old ones are dropped (aliases first, as they reference the
    # versions), and renaming model_versions_v3 rewrites the new aliases' foreign key.
    2: (
        f"ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT '{DEFAULT_TENANT}'",
        "DROP INDEX jobs_request_id",
        "CREATE UNIQUE INDEX jobs_request_id ON jobs (tenant, request_id) WHERE request_id <> ''",
        "CREATE INDEX jobs_tenant ON jobs (tenant, seq)",
        f"ALTER TABLE uploads ADD COLUMN tenant TEXT NOT NULL DEFAULT '{DEFAULT_TENANT}'",
        f"""CREATE TABLE model_versions_v3 (
            tenant TEXT NOT NULL DEFAULT '{DEFAULT_TENANT}',
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            create_time REAL NOT NULL,
            job_id TEXT NOT NULL,
            backbone TEXT NOT NULL,
            labels_json TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            card_json TEXT NOT NULL,
            artifact_dir TEXT NOT NULL,
            metrics_json TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (tenant, name, version)
        )""",
        f"""INSERT INTO model_versions_v3 (tenant, name, version, create_time, job_id, backbone,
            labels_json, sha256, card_json, artifact_dir, metrics_json)
            SELECT '{DEFAULT_TENANT}', name, version, create_time, job_id, backbone,
            labels_json, sha256, card_json, artifact_dir, metrics_json FROM model_versions""",
        """CREATE TABLE model_aliases_v3 (
            tenant TEXT NOT NULL,
            name TEXT NOT NULL,
            alias TEXT NOT NULL,
            version INTEGER NOT NULL,
            PRIMARY KEY (tenant, name, alias),
            FOREIGN KEY (tenant, name, version)
                REFERENCES model_versions_v3 (tenant, name, version)
        )""",
        f"""INSERT INTO model_aliases_v3 (tenant, name, alias, version)
            SELECT '{DEFAULT_TENANT}', name, alias, version FROM model_aliases""",
        "DROP TABLE model_aliases",
        "DROP TABLE model_versions",
        "ALTER TABLE model_versions_v3 RENAME TO model_versions",
        "ALTER TABLE model_aliases_v3 RENAME TO model_aliases",
        """CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,  -- sha256 of the token, hex; never the token
            tenant TEXT NOT NULL,
            admin INTEGER NOT NULL DEFAULT 0,
            name TEXT NOT NULL DEFAULT '',
            create_time REAL NOT NULL,
            revoke_time REAL
        )""",
    ),
    # 3 -> 4: a job remembers a digest of the request that created it, so a request_id
    # sent again with a different request is refused instead of answered with the first
    # job (the plan itself is rewritten once resolved). Older jobs have none: not compared.
    3: ("ALTER TABLE jobs ADD COLUMN request_hash TEXT NOT NULL DEFAULT ''",),
    # 4 -> 5: upload quotas and expiry. An upload records its file name, the bytes of its
    # extracted copy (0 for older ones: theirs went to the shared cache) and when it was
    # last used (uploaded, or named by a new job or Advise); jobs are found by upload.
    4: (
        "ALTER TABLE uploads ADD COLUMN filename TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE uploads ADD COLUMN extracted_bytes INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE uploads ADD COLUMN last_used REAL NOT NULL DEFAULT 0",
        "UPDATE uploads SET last_used = create_time",
        "CREATE INDEX uploads_tenant ON uploads (tenant, create_time)",
        "CREATE INDEX jobs_dataset_id ON jobs (dataset_id) WHERE dataset_id <> ''",
    ),
}
