-- ZStack 1.0.0: the first schema. Resources mirror the original's VO tables.

CREATE TABLE account (
    uuid          TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    type          TEXT NOT NULL,             -- SystemAdmin | Normal
    password_hash TEXT NOT NULL,             -- argon2/sha256-crypt string, never plain text
    create_date   TEXT NOT NULL,
    last_op_date  TEXT NOT NULL
);

CREATE TABLE session (
    uuid          TEXT PRIMARY KEY,
    account_uuid  TEXT NOT NULL REFERENCES account (uuid) ON DELETE CASCADE,
    expired_date  TEXT NOT NULL,
    create_date   TEXT NOT NULL
);

CREATE TABLE zone (
    uuid          TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    description   TEXT,
    state         TEXT NOT NULL,
    create_date   TEXT NOT NULL,
    last_op_date  TEXT NOT NULL
);

CREATE TABLE cluster (
    uuid            TEXT PRIMARY KEY,
    zone_uuid       TEXT NOT NULL REFERENCES zone (uuid),
    name            TEXT NOT NULL,
    description     TEXT,
    hypervisor_type TEXT NOT NULL,
    state           TEXT NOT NULL,
    create_date     TEXT NOT NULL,
    last_op_date    TEXT NOT NULL
);

CREATE TABLE host (
    uuid              TEXT PRIMARY KEY,
    zone_uuid         TEXT NOT NULL REFERENCES zone (uuid),
    cluster_uuid      TEXT NOT NULL REFERENCES cluster (uuid),
    name              TEXT NOT NULL,
    management_ip     TEXT NOT NULL,
    hypervisor_type   TEXT NOT NULL,         -- KVM | Simulator
    state             TEXT NOT NULL,         -- Enabled | Disabled | Maintenance
    status            TEXT NOT NULL,         -- Connecting | Connected | Disconnected
    total_cpu         INTEGER NOT NULL DEFAULT 0,
    available_cpu     INTEGER NOT NULL DEFAULT 0,
    total_memory      INTEGER NOT NULL DEFAULT 0,
    available_memory  INTEGER NOT NULL DEFAULT 0,
    create_date       TEXT NOT NULL,
    last_op_date      TEXT NOT NULL
);

CREATE TABLE global_config (
    category      TEXT NOT NULL,
    name          TEXT NOT NULL,
    value         TEXT NOT NULL,
    default_value TEXT NOT NULL,
    description   TEXT NOT NULL,
    PRIMARY KEY (category, name)
);

CREATE TABLE image (
    uuid          TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    url           TEXT NOT NULL,
    format        TEXT NOT NULL,
    media_type    TEXT NOT NULL,
    size          INTEGER NOT NULL DEFAULT 0,
    md5sum        TEXT,
    status        TEXT NOT NULL,
    create_date   TEXT NOT NULL,
    last_op_date  TEXT NOT NULL
);

CREATE TABLE instance_offering (
    uuid          TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    cpu_num       INTEGER NOT NULL,
    memory_size   INTEGER NOT NULL,
    create_date   TEXT NOT NULL,
    last_op_date  TEXT NOT NULL
);

CREATE TABLE vm_instance (
    uuid                    TEXT PRIMARY KEY,
    name                    TEXT NOT NULL,
    zone_uuid               TEXT REFERENCES zone (uuid),
    cluster_uuid            TEXT REFERENCES cluster (uuid),
    host_uuid               TEXT REFERENCES host (uuid),
    image_uuid              TEXT,
    instance_offering_uuid  TEXT,
    cpu_num                 INTEGER NOT NULL,
    memory_size             INTEGER NOT NULL,
    state                   TEXT NOT NULL,
    create_date             TEXT NOT NULL,
    last_op_date            TEXT NOT NULL
);

CREATE INDEX vm_instance_host ON vm_instance (host_uuid);
CREATE INDEX vm_instance_state ON vm_instance (state);
