-- ZStack 1.2.0: hosts trusted through the cloud's certificates, and added over SSH.
--
-- host.certificate_serial: the serial (hex) of the certificate the host's agent serves with;
-- the management node's host channel takes only certificates whose serial a host row holds.
-- revoked_certificate: what DeleteHost revoked; the CA's revocation list is made from it.
-- host.ssh_*: how the management node logs in to the host (its own key; never a password).
-- job.steps: the steps a long job went through, for QueryJob.

ALTER TABLE host ADD COLUMN certificate_serial TEXT;
ALTER TABLE host ADD COLUMN ssh_user TEXT;
ALTER TABLE host ADD COLUMN ssh_port INTEGER;
ALTER TABLE host ADD COLUMN ssh_host_key TEXT;

CREATE TABLE revoked_certificate (
    serial        TEXT PRIMARY KEY,
    host_uuid     TEXT,
    management_ip TEXT,
    revoked_date  TEXT NOT NULL
);

ALTER TABLE job ADD COLUMN steps TEXT;
