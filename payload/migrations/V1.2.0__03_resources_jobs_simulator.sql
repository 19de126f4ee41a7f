-- ZStack 1.2.0: the rest of the cloud's resources: attachments of storage and networks to clusters,
-- backup storage, IP ranges and the IPs handed out from them, network service providers, VM NICs,
-- asynchronous API jobs, and the simulator host type.

ALTER TABLE host ADD COLUMN agent_port INTEGER;
ALTER TABLE host ADD COLUMN status_reason TEXT;
ALTER TABLE host ADD COLUMN virtualization TEXT;            -- kvm | qemu (TCG) | simulator
ALTER TABLE host ADD COLUMN libvirt_version TEXT;
ALTER TABLE host ADD COLUMN qemu_version TEXT;
CREATE INDEX host_cluster ON host (cluster_uuid);

-- A simulator host is a real host type whose "hypervisor" is a table: its capacity, and the VMs it
-- runs, which survive a restart of the management node as a real host's VMs do.
CREATE TABLE simulator_host (
    host_uuid        TEXT PRIMARY KEY REFERENCES host (uuid) ON DELETE CASCADE,
    cpu_capacity     INTEGER NOT NULL,
    memory_capacity  INTEGER NOT NULL,
    storage_capacity INTEGER NOT NULL
);
CREATE TABLE simulator_vm (
    host_uuid     TEXT NOT NULL REFERENCES simulator_host (host_uuid) ON DELETE CASCADE,
    vm_uuid       TEXT NOT NULL,
    state         TEXT NOT NULL,
    PRIMARY KEY (host_uuid, vm_uuid)
);

CREATE TABLE cluster_primary_storage (
    cluster_uuid         TEXT NOT NULL REFERENCES cluster (uuid),
    primary_storage_uuid TEXT NOT NULL REFERENCES primary_storage (uuid),
    create_date          TEXT NOT NULL,
    PRIMARY KEY (cluster_uuid, primary_storage_uuid)
);

CREATE TABLE cluster_l2_network (
    cluster_uuid  TEXT NOT NULL REFERENCES cluster (uuid),
    l2_uuid       TEXT NOT NULL REFERENCES l2_network (uuid),
    create_date   TEXT NOT NULL,
    PRIMARY KEY (cluster_uuid, l2_uuid)
);

ALTER TABLE cluster ADD COLUMN type TEXT NOT NULL DEFAULT 'zstack';
ALTER TABLE l2_network ADD COLUMN description TEXT;
ALTER TABLE l3_network ADD COLUMN description TEXT;
ALTER TABLE l3_network ADD COLUMN type TEXT NOT NULL DEFAULT 'L3BasicNetwork';
ALTER TABLE l3_network ADD COLUMN state TEXT NOT NULL DEFAULT 'Enabled';
ALTER TABLE primary_storage ADD COLUMN description TEXT;
-- Set once a host has written the storage's id file at the mount point; from then on every host
-- must find that file, or it has another filesystem (or none) mounted at the path.
ALTER TABLE primary_storage ADD COLUMN id_written INTEGER NOT NULL DEFAULT 0;
ALTER TABLE instance_offering ADD COLUMN description TEXT;

-- A directory on the management node holding images; agents fetch images from the node.
CREATE TABLE backup_storage (
    uuid               TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    description        TEXT,
    type               TEXT NOT NULL,          -- Local
    url                TEXT NOT NULL,
    total_capacity     INTEGER NOT NULL DEFAULT 0,
    available_capacity INTEGER NOT NULL DEFAULT 0,
    state              TEXT NOT NULL,
    status             TEXT NOT NULL,
    create_date        TEXT NOT NULL,
    last_op_date       TEXT NOT NULL
);
CREATE TABLE zone_backup_storage (
    zone_uuid           TEXT NOT NULL REFERENCES zone (uuid),
    backup_storage_uuid TEXT NOT NULL REFERENCES backup_storage (uuid),
    create_date         TEXT NOT NULL,
    PRIMARY KEY (zone_uuid, backup_storage_uuid)
);

ALTER TABLE image ADD COLUMN description TEXT;
ALTER TABLE image ADD COLUMN backup_storage_uuid TEXT REFERENCES backup_storage (uuid);
ALTER TABLE image ADD COLUMN install_path TEXT;
ALTER TABLE image ADD COLUMN sha256sum TEXT;
ALTER TABLE image ADD COLUMN actual_size INTEGER NOT NULL DEFAULT 0;
ALTER TABLE image ADD COLUMN platform TEXT NOT NULL DEFAULT 'Linux';
ALTER TABLE image ADD COLUMN state TEXT NOT NULL DEFAULT 'Enabled';

CREATE TABLE ip_range (
    uuid          TEXT PRIMARY KEY,
    l3_uuid       TEXT NOT NULL REFERENCES l3_network (uuid),
    name          TEXT NOT NULL,
    description   TEXT,
    start_ip      TEXT NOT NULL,
    end_ip        TEXT NOT NULL,
    netmask       TEXT NOT NULL,
    gateway       TEXT NOT NULL,
    create_date   TEXT NOT NULL,
    last_op_date  TEXT NOT NULL
);

-- Every IP handed out. The unique key is the last line of defence against handing one IP out twice;
-- the allocator never relies on hitting it.
CREATE TABLE used_ip (
    uuid           TEXT PRIMARY KEY,
    l3_uuid        TEXT NOT NULL REFERENCES l3_network (uuid),
    ip_range_uuid  TEXT NOT NULL REFERENCES ip_range (uuid),
    ip             TEXT NOT NULL,
    ip_int         INTEGER NOT NULL,
    owner_type     TEXT NOT NULL,             -- VmNic | Vip | DhcpServer (owner: the L3)
    owner_uuid     TEXT NOT NULL,
    create_date    TEXT NOT NULL,
    UNIQUE (l3_uuid, ip_int)
);
CREATE INDEX used_ip_range ON used_ip (ip_range_uuid);

CREATE TABLE network_service_provider (
    uuid          TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    type          TEXT NOT NULL,
    description   TEXT,
    create_date   TEXT NOT NULL,
    last_op_date  TEXT NOT NULL
);
CREATE TABLE network_service_type (
    provider_uuid TEXT NOT NULL REFERENCES network_service_provider (uuid),
    service_type  TEXT NOT NULL,
    PRIMARY KEY (provider_uuid, service_type)
);
CREATE TABLE l3_network_service (
    l3_uuid       TEXT NOT NULL REFERENCES l3_network (uuid),
    provider_uuid TEXT NOT NULL REFERENCES network_service_provider (uuid),
    service_type  TEXT NOT NULL,
    PRIMARY KEY (l3_uuid, service_type)
);

INSERT INTO network_service_provider (uuid, name, type, description, create_date, last_op_date)
VALUES (lower(hex(randomblob(16))), 'Flat Network Service Provider', 'Flat',
        'DHCP, userdata and EIP served on each KVM host, without a virtual router',
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
INSERT INTO network_service_type (provider_uuid, service_type)
SELECT uuid, t.column1 FROM network_service_provider, (VALUES ('DHCP'), ('Userdata'), ('Eip')) AS t
 WHERE type = 'Flat';

CREATE TABLE vm_nic (
    uuid          TEXT PRIMARY KEY,
    vm_uuid       TEXT NOT NULL REFERENCES vm_instance (uuid) ON DELETE CASCADE,
    l3_uuid       TEXT NOT NULL REFERENCES l3_network (uuid),
    used_ip_uuid  TEXT,
    ip            TEXT,
    mac           TEXT NOT NULL UNIQUE,
    netmask       TEXT,
    gateway       TEXT,
    device_id     INTEGER NOT NULL,
    create_date   TEXT NOT NULL,
    last_op_date  TEXT NOT NULL
);
CREATE INDEX vm_nic_vm ON vm_nic (vm_uuid);

ALTER TABLE vm_instance ADD COLUMN description TEXT;
ALTER TABLE vm_instance ADD COLUMN last_host_uuid TEXT;
ALTER TABLE vm_instance ADD COLUMN root_volume_uuid TEXT;
ALTER TABLE vm_instance ADD COLUMN hypervisor_type TEXT;
ALTER TABLE vm_instance ADD COLUMN ssh_key TEXT;
ALTER TABLE vm_instance ADD COLUMN root_password_hash TEXT;    -- SHA-512 crypt, for cloud-init
CREATE INDEX vm_instance_name ON vm_instance (name);

ALTER TABLE volume ADD COLUMN description TEXT;
ALTER TABLE volume ADD COLUMN status TEXT NOT NULL DEFAULT 'Ready';
ALTER TABLE volume ADD COLUMN device_id INTEGER;
ALTER TABLE volume ADD COLUMN format TEXT NOT NULL DEFAULT 'qcow2';
ALTER TABLE volume ADD COLUMN cache_mode TEXT;               -- kvm/vm.cacheMode when last started or attached
CREATE INDEX volume_vm ON volume (vm_uuid);

ALTER TABLE vip ADD COLUMN description TEXT;
ALTER TABLE vip ADD COLUMN used_ip_uuid TEXT;
ALTER TABLE eip ADD COLUMN description TEXT;
ALTER TABLE eip ADD COLUMN guest_ip TEXT;

-- Asynchronous API calls: one row per call, kept after it ends so it can be polled; a job still
-- Running when the management node starts is marked Failed with the reason, never dropped.
CREATE TABLE job (
    uuid          TEXT PRIMARY KEY,
    api_name      TEXT NOT NULL,
    state         TEXT NOT NULL,              -- Running | Succeeded | Failed
    resource_uuid TEXT,
    result        TEXT,
    error         TEXT,
    create_date   TEXT NOT NULL,
    last_op_date  TEXT NOT NULL
);
CREATE INDEX job_state ON job (state);
