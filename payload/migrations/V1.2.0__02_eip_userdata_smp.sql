-- ZStack 1.2.0: distributed EIP, userdata, and shared mount point primary storage.

CREATE TABLE primary_storage (
    uuid               TEXT PRIMARY KEY,
    zone_uuid          TEXT NOT NULL REFERENCES zone (uuid),
    name               TEXT NOT NULL,
    type               TEXT NOT NULL,          -- SharedMountPoint
    url                TEXT NOT NULL,
    total_capacity     INTEGER NOT NULL DEFAULT 0,
    available_capacity INTEGER NOT NULL DEFAULT 0,
    state              TEXT NOT NULL,
    status             TEXT NOT NULL,
    create_date        TEXT NOT NULL,
    last_op_date       TEXT NOT NULL
);

CREATE TABLE vip (
    uuid          TEXT PRIMARY KEY,
    l3_uuid       TEXT NOT NULL REFERENCES l3_network (uuid),
    name          TEXT NOT NULL,
    ip            TEXT NOT NULL,
    state         TEXT NOT NULL,
    create_date   TEXT NOT NULL,
    last_op_date  TEXT NOT NULL
);

CREATE TABLE eip (
    uuid          TEXT PRIMARY KEY,
    vip_uuid      TEXT NOT NULL REFERENCES vip (uuid),
    vm_nic_uuid   TEXT,
    name          TEXT NOT NULL,
    state         TEXT NOT NULL,
    create_date   TEXT NOT NULL,
    last_op_date  TEXT NOT NULL
);

ALTER TABLE vm_instance ADD COLUMN user_data TEXT;
ALTER TABLE volume ADD COLUMN primary_storage_uuid TEXT REFERENCES primary_storage (uuid);
