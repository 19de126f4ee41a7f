-- ZStack 1.1.0: networks, volumes and the KVM disk cache mode as an integer global config
-- (0 = none, 1 = writethrough, 2 = writeback), as the original 1.1 stored it.

CREATE TABLE l2_network (
    uuid               TEXT PRIMARY KEY,
    zone_uuid          TEXT NOT NULL REFERENCES zone (uuid),
    name               TEXT NOT NULL,
    type               TEXT NOT NULL,
    physical_interface TEXT NOT NULL,
    create_date        TEXT NOT NULL,
    last_op_date       TEXT NOT NULL
);

CREATE TABLE l3_network (
    uuid          TEXT PRIMARY KEY,
    l2_uuid       TEXT NOT NULL REFERENCES l2_network (uuid),
    zone_uuid     TEXT NOT NULL REFERENCES zone (uuid),
    name          TEXT NOT NULL,
    dns_domain    TEXT,
    create_date   TEXT NOT NULL,
    last_op_date  TEXT NOT NULL
);

CREATE TABLE volume (
    uuid              TEXT PRIMARY KEY,
    vm_uuid           TEXT REFERENCES vm_instance (uuid),
    name              TEXT NOT NULL,
    type              TEXT NOT NULL,      -- Root | Data
    install_path      TEXT,
    size              INTEGER NOT NULL DEFAULT 0,
    state             TEXT NOT NULL,
    create_date       TEXT NOT NULL,
    last_op_date      TEXT NOT NULL
);

ALTER TABLE vm_instance ADD COLUMN default_l3_uuid TEXT;

INSERT INTO global_config (category, name, value, default_value, description)
VALUES ('kvm', 'vm.cacheMode', '0', '0',
        'libvirt disk cache mode of VMs: 0 = none, 1 = writethrough, 2 = writeback');
