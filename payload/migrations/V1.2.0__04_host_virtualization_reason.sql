-- ZStack 1.2.0: why a host's agent chose its virtualization (kvmagent.virtualization as set, or what
-- the probe of `auto` found: a guest under -accel kvm reached its firmware, or did not and why).

ALTER TABLE host ADD COLUMN virtualization_reason TEXT;
