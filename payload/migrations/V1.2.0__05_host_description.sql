-- ZStack 1.2.0: a host's free-text description, as AddKVMHost, AddSimulatorHost and UpdateHost take it.

ALTER TABLE host ADD COLUMN description TEXT;
