-- nPanel store, schema 1 (PostgreSQL). Times are Unix milliseconds; documents are JSON text.
CREATE TABLE accounts (
    id               TEXT PRIMARY KEY,
    type             TEXT NOT NULL,
    parent           TEXT,
    reseller         TEXT,
    package          TEXT,
    status           TEXT NOT NULL,
    domain           TEXT,
    email            TEXT,
    created_at       BIGINT NOT NULL,
    suspended_at     BIGINT,
    suspend_reason   TEXT,
    terminated_at    BIGINT,
    whmcs_service_id TEXT,
    allowance        TEXT
);
CREATE INDEX accounts_parent ON accounts (parent, id);
CREATE INDEX accounts_reseller ON accounts (reseller, id);
CREATE INDEX accounts_package ON accounts (package, status);

CREATE TABLE packages (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    version           BIGINT NOT NULL,
    status            TEXT NOT NULL,
    owner             TEXT,
    limits            TEXT NOT NULL,
    features          TEXT NOT NULL,
    disabled_features TEXT NOT NULL,
    pricing           TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX packages_owner ON packages (owner, id);

CREATE TABLE job_history (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    account     TEXT,
    reseller    TEXT,
    finished_at BIGINT NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX job_history_account ON job_history (account, id);
CREATE INDEX job_history_reseller ON job_history (reseller, id);
CREATE INDEX job_history_kind ON job_history (kind, id);
CREATE INDEX job_history_status ON job_history (status, id);
CREATE INDEX job_history_finished ON job_history (finished_at);

CREATE TABLE archive_marks (
    name  TEXT PRIMARY KEY,
    score BIGINT NOT NULL,
    last  TEXT NOT NULL
);

CREATE TABLE audit (
    seq           BIGINT PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    ts            BIGINT NOT NULL,
    account       TEXT,
    reseller      TEXT,
    actor_type    TEXT NOT NULL,
    actor_id      TEXT NOT NULL,
    action        TEXT NOT NULL,
    resource_type TEXT,
    resource_id   TEXT,
    result        TEXT NOT NULL,
    job_id        TEXT,
    parent_id     TEXT,
    doc           TEXT NOT NULL,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
);
CREATE INDEX audit_ts ON audit (ts, seq);
CREATE INDEX audit_account ON audit (account, seq);
CREATE INDEX audit_reseller ON audit (reseller, seq);
CREATE INDEX audit_action ON audit (action, seq);
CREATE INDEX audit_actor ON audit (actor_id, seq);
CREATE INDEX audit_parent ON audit (parent_id);
CREATE INDEX audit_job ON audit (job_id);
