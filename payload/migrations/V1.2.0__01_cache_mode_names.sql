-- ZStack 1.2.0: the KVM cache mode global config stores libvirt's names instead of integers.
-- 0 -> none, 1 -> writethrough, 2 -> writeback; anything else (never valid) becomes the default.

UPDATE global_config
   SET value = CASE value
                   WHEN '0' THEN 'none'
                   WHEN '1' THEN 'writethrough'
                   WHEN '2' THEN 'writeback'
                   WHEN 'none' THEN 'none'
                   WHEN 'writethrough' THEN 'writethrough'
                   WHEN 'writeback' THEN 'writeback'
                   ELSE 'none'
               END,
       default_value = 'none',
       description = 'libvirt disk cache mode of VMs started or volumes attached after a change: none, writethrough or writeback'
 WHERE category = 'kvm' AND name = 'vm.cacheMode';

INSERT OR IGNORE INTO global_config (category, name, value, default_value, description)
VALUES ('kvm', 'vm.cacheMode', 'none', 'none',
        'libvirt disk cache mode of VMs started or volumes attached after a change: none, writethrough or writeback');
