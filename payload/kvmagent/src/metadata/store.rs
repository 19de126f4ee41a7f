//! What each VM is told, keyed by (L3 uuid, VM IP), persisted one JSON file per VM.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use zstack_common::Layout;

use crate::file_error::file_error;

use super::cloud_config::CloudConfigError;
use super::{user_data_for, VmSpec, USERDATA_SERVICE};

/// Why the store refuses a VM or cannot keep its file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("VM {vm}: NIC {nic} has no valid IP ({ip:?})")]
    NicIp { vm: String, nic: String, ip: String },
    #[error("VM {vm}: {source}")]
    CloudConfig {
        vm: String,
        source: CloudConfigError,
    },
    #[error("{0:?} is not a VM uuid")]
    VmUuid(String),
    #[error(transparent)]
    File(#[from] crate::file_error::FileError),
    #[error("cannot encode the records of VM {vm}: {source}")]
    Encode {
        vm: String,
        source: serde_json::Error,
    },
}

/// Why a file of the store was not loaded (reported, and left alone).
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: unknown version {version}")]
    Version { path: PathBuf, version: u32 },
    #[error("{path}: records of another VM")]
    OtherVm { path: PathBuf },
}

/// The version of the files the store writes.
const FILE_VERSION: u32 = 1;

/// Where the agent keeps the store: `/var/lib/zstack/kvmagent/metadata`.
pub fn store_dir(layout: &Layout) -> PathBuf {
    layout.host(layout.data_dir().join("kvmagent/metadata"))
}

/// What one NIC of a VM is told (one record per NIC on an L3 with the Userdata service).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VmRecord {
    pub l3_network_uuid: String,
    /// `instance-id`: the VM's uuid.
    pub instance_id: String,
    /// `hostname`, `local-hostname`: the VM's hostname, else its IP with dashes (`10-0-0-5`),
    /// as ZStack names a VM without one.
    pub hostname: String,
    /// `local-ipv4`: the NIC's IP, which the VM's requests come from.
    pub local_ipv4: String,
    /// `mac`.
    pub mac: String,
    /// `public-ipv4`: the NIC's EIP, listed only when there is one.
    #[serde(default)]
    pub public_ipv4: Option<String>,
    /// `public-keys/<n>/openssh-key`: one key per non-empty line.
    #[serde(default)]
    pub ssh_key: Option<String>,
    /// `placement/availability-zone` (left out when empty).
    #[serde(default)]
    pub availability_zone: String,
    /// `user-data`: the VM's own, else a `#cloud-config` adding its ssh key, else none (404).
    #[serde(default)]
    pub user_data: Option<String>,
    /// IMDSv2 only: requests without a token are refused (401).
    #[serde(default)]
    pub token_required: bool,
}

impl VmRecord {
    pub(super) fn ssh_keys(&self) -> impl Iterator<Item = &str> {
        self.ssh_key
            .as_deref()
            .unwrap_or("")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
    }
}

/// The records of a VM: one per NIC whose L3 has the Userdata service.
pub fn records_of(spec: &VmSpec) -> Result<Vec<VmRecord>, StoreError> {
    let mut out = Vec::new();
    for nic in &spec.nics {
        if !nic
            .services
            .iter()
            .any(|s| s.eq_ignore_ascii_case(USERDATA_SERVICE))
        {
            continue;
        }
        let ip: IpAddr = nic.ip.trim().parse().map_err(|_| StoreError::NicIp {
            vm: spec.uuid.clone(),
            nic: nic.uuid.clone(),
            ip: nic.ip.clone(),
        })?;
        let md = &spec.metadata;
        let hostname = if md.hostname.trim().is_empty() {
            ip.to_string().replace(['.', ':'], "-")
        } else {
            md.hostname.trim().to_string()
        };
        out.push(VmRecord {
            l3_network_uuid: nic.l3_network_uuid.clone(),
            instance_id: spec.uuid.clone(),
            hostname,
            local_ipv4: ip.to_string(),
            mac: nic.mac.clone(),
            public_ipv4: None,
            ssh_key: md.ssh_key.clone().filter(|k| !k.trim().is_empty()),
            availability_zone: md.availability_zone.clone(),
            user_data: user_data_for(
                spec.user_data.as_deref(),
                md.ssh_key.as_deref(),
                md.root_password_hash.as_deref(),
            )
            .map_err(|source| StoreError::CloudConfig {
                vm: spec.uuid.clone(),
                source,
            })?,
            token_required: md.token_required,
        });
    }
    Ok(out)
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VmFile {
    version: u32,
    vm_uuid: String,
    records: Vec<VmRecord>,
}

#[derive(Default)]
struct Index {
    /// L3 uuid -> VM IP -> record.
    by_l3: HashMap<String, HashMap<IpAddr, Arc<VmRecord>>>,
    /// VM uuid -> its records.
    by_vm: BTreeMap<String, Vec<Arc<VmRecord>>>,
}

impl Index {
    fn get(&self, l3: &str, ip: IpAddr) -> Option<&Arc<VmRecord>> {
        self.by_l3.get(l3)?.get(&ip)
    }

    /// Replaces the records of `vm` with `records` (empty: forgets the VM).
    fn set_vm(&mut self, vm: &str, records: Vec<Arc<VmRecord>>) {
        if let Some(old) = self.by_vm.remove(vm) {
            for r in old {
                if let Some(ip) = addr_of(&r) {
                    if let Some(m) = self.by_l3.get_mut(&r.l3_network_uuid) {
                        if m.get(&ip).is_some_and(|cur| cur.instance_id == vm) {
                            m.remove(&ip);
                        }
                        if m.is_empty() {
                            self.by_l3.remove(&r.l3_network_uuid);
                        }
                    }
                }
            }
        }
        if records.is_empty() {
            return;
        }
        for r in &records {
            if let Some(ip) = addr_of(r) {
                self.by_l3
                    .entry(r.l3_network_uuid.clone())
                    .or_default()
                    .insert(ip, r.clone());
            }
        }
        self.by_vm.insert(vm.to_string(), records);
    }
}

fn addr_of(r: &VmRecord) -> Option<IpAddr> {
    r.local_ipv4.parse().ok()
}

/// The VMs the metadata server knows, persisted one JSON file per VM. See the module's doc.
pub struct MetadataStore {
    dir: PathBuf,
    index: RwLock<Index>,
    /// Serialises changes (file, then index), so files and index agree and two changes of a VM
    /// never write its file out of order. Lookups do not take it.
    writer: Mutex<()>,
    skipped: Vec<String>,
}

impl MetadataStore {
    /// Opens the store kept in `dir` (made if missing, mode 0700: user data may hold secrets)
    /// and loads every `<vm>.json` in it. A file that cannot be read or parsed is left alone and
    /// reported by [`MetadataStore::skipped`].
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(file_error("create", &dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(file_error("set the mode of", &dir))?;
        }
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(file_error("read", &dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        let mut index = Index::default();
        let mut skipped = Vec::new();
        for path in names {
            match load_file(&path) {
                Ok(f) => {
                    // A later file claiming an address another holds takes it, as a later
                    // upsert would.
                    let records: Vec<Arc<VmRecord>> = f.records.into_iter().map(Arc::new).collect();
                    for r in &records {
                        if let Some(ip) = addr_of(r) {
                            if let Some(other) = index.get(&r.l3_network_uuid, ip).cloned() {
                                let kept = index
                                    .by_vm
                                    .get(&other.instance_id)
                                    .map(|rs| {
                                        rs.iter()
                                            .filter(|x| !Arc::ptr_eq(x, &other))
                                            .cloned()
                                            .collect()
                                    })
                                    .unwrap_or_default();
                                index.set_vm(&other.instance_id, kept);
                            }
                        }
                    }
                    index.set_vm(&f.vm_uuid, records);
                }
                Err(e) => skipped.push(e.to_string()),
            }
        }
        Ok(MetadataStore {
            dir,
            index: RwLock::new(index),
            writer: Mutex::new(()),
            skipped,
        })
    }

    /// The files [`MetadataStore::open`] could not load, with why.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record of the VM with `ip` on L3 `l3`.
    pub fn lookup(&self, l3: &str, ip: &str) -> Option<Arc<VmRecord>> {
        self.lookup_addr(l3, ip.trim().parse().ok()?)
    }

    /// [`MetadataStore::lookup`] by address.
    pub fn lookup_addr(&self, l3: &str, ip: IpAddr) -> Option<Arc<VmRecord>> {
        self.read().get(l3, ip.to_canonical()).cloned()
    }

    /// The VMs the store knows.
    pub fn vm_uuids(&self) -> Vec<String> {
        self.read().by_vm.keys().cloned().collect()
    }

    /// The records of a VM.
    pub fn records(&self, vm_uuid: &str) -> Vec<VmRecord> {
        self.read()
            .by_vm
            .get(vm_uuid)
            .map(|rs| rs.iter().map(|r| VmRecord::clone(r)).collect())
            .unwrap_or_default()
    }

    /// Records what a starting (or restarted) VM is told: one record per NIC on an L3 with the
    /// Userdata service, replacing what the store had for that VM (its EIPs are kept for the
    /// addresses it keeps). A VM without such a NIC is forgotten. An address another VM held
    /// on that L3 (a VM gone while the agent was down) now belongs to this one. Answers the
    /// number of records.
    pub fn upsert_vm(&self, spec: &VmSpec) -> Result<usize, StoreError> {
        let mut records = records_of(spec)?;
        check_vm_uuid(&spec.uuid)?;
        let _w = self.lock_writer();
        // Keep the EIPs already set for the addresses the VM keeps.
        let (old, others) = {
            let idx = self.read();
            let old: Vec<Arc<VmRecord>> = idx.by_vm.get(&spec.uuid).cloned().unwrap_or_default();
            // Other VMs losing an address to this one: VM uuid -> the records they keep.
            let mut others: BTreeMap<String, Vec<Arc<VmRecord>>> = BTreeMap::new();
            for r in &records {
                let Some(ip) = addr_of(r) else { continue };
                if let Some(holder) = idx.get(&r.l3_network_uuid, ip) {
                    if holder.instance_id != spec.uuid {
                        let kept = others.entry(holder.instance_id.clone()).or_insert_with(|| {
                            idx.by_vm
                                .get(&holder.instance_id)
                                .cloned()
                                .unwrap_or_default()
                        });
                        kept.retain(|x| !Arc::ptr_eq(x, holder));
                    }
                }
            }
            (old, others)
        };
        for r in &mut records {
            if let Some(o) = old
                .iter()
                .find(|o| o.l3_network_uuid == r.l3_network_uuid && o.local_ipv4 == r.local_ipv4)
            {
                r.public_ipv4 = o.public_ipv4.clone();
            }
        }
        // Each file written is applied at once, so the index always says what the files say.
        for (vm, kept) in others {
            self.persist(&vm, kept.iter().map(|r| r.as_ref()))?;
            self.write().set_vm(&vm, kept);
        }
        self.persist(&spec.uuid, records.iter())?;
        let n = records.len();
        self.write()
            .set_vm(&spec.uuid, records.into_iter().map(Arc::new).collect());
        Ok(n)
    }

    /// Forgets a VM (destroyed, stopped, migrated away). Answers whether the store knew it.
    pub fn remove_vm(&self, vm_uuid: &str) -> Result<bool, StoreError> {
        let _w = self.lock_writer();
        let known = self.read().by_vm.contains_key(vm_uuid);
        if check_vm_uuid(vm_uuid).is_ok() {
            self.persist(vm_uuid, std::iter::empty())?;
        }
        self.write().set_vm(vm_uuid, Vec::new());
        Ok(known)
    }

    /// Sets (or, with `None`, clears) the `public-ipv4` of the VM with `ip` on `l3` (its EIP).
    /// Answers whether the store knows that VM.
    pub fn set_public_ip(
        &self,
        l3: &str,
        ip: &str,
        public: Option<String>,
    ) -> Result<bool, StoreError> {
        let Ok(addr) = ip.trim().parse::<IpAddr>() else {
            return Ok(false);
        };
        let addr = addr.to_canonical();
        let _w = self.lock_writer();
        let (vm, updated) = {
            let idx = self.read();
            let Some(rec) = idx.get(l3, addr) else {
                return Ok(false);
            };
            let vm = rec.instance_id.clone();
            let updated: Vec<Arc<VmRecord>> = idx
                .by_vm
                .get(&vm)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|r| {
                    if Arc::ptr_eq(&r, rec) {
                        let mut n = VmRecord::clone(&r);
                        n.public_ipv4 = public.clone().filter(|p| !p.trim().is_empty());
                        Arc::new(n)
                    } else {
                        r
                    }
                })
                .collect();
            (vm, updated)
        };
        self.persist(&vm, updated.iter().map(|r| r.as_ref()))?;
        self.write().set_vm(&vm, updated);
        Ok(true)
    }

    fn file_of(&self, vm_uuid: &str) -> PathBuf {
        self.dir.join(format!("{vm_uuid}.json"))
    }

    /// Writes the file of `vm` (atomically), or removes it when it has no records.
    fn persist<'a>(
        &self,
        vm: &str,
        records: impl Iterator<Item = &'a VmRecord>,
    ) -> Result<(), StoreError> {
        let path = self.file_of(vm);
        let records: Vec<VmRecord> = records.cloned().collect();
        if records.is_empty() {
            return match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(file_error("remove", &path)(e).into()),
            };
        }
        let file = VmFile {
            version: FILE_VERSION,
            vm_uuid: vm.to_string(),
            records,
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|source| StoreError::Encode {
            vm: vm.to_string(),
            source,
        })?;
        Ok(zstack_common::fsutil::atomic_write(&path, &text, 0o600)
            .map_err(file_error("write", &path))?)
    }
}

/// A VM uuid names a file: letters, digits, `-` and `_` only.
fn check_vm_uuid(vm: &str) -> Result<(), StoreError> {
    if vm.is_empty()
        || vm.len() > 128
        || !vm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(StoreError::VmUuid(vm.to_string()));
    }
    Ok(())
}

fn load_file(path: &Path) -> Result<VmFile, LoadError> {
    let text = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let f: VmFile = serde_json::from_slice(&text).map_err(|source| LoadError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if f.version != FILE_VERSION {
        return Err(LoadError::Version {
            path: path.to_path_buf(),
            version: f.version,
        });
    }
    if f.vm_uuid != stem || f.records.iter().any(|r| r.instance_id != stem) {
        return Err(LoadError::OtherVm {
            path: path.to_path_buf(),
        });
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use super::super::test_support::*;
    use super::*;

    #[test]
    fn store_persists_and_reloads() {
        let (dir, s) = store();
        let path = dir.path().join("metadata");
        assert_eq!(
            s.upsert_vm(&vm(
                "vm1",
                vec![
                    nic(L3, "10.0.0.5", &["Userdata"]),
                    nic("l3b", "10.2.0.5", &["DHCP", "Userdata"]),
                    nic("l3c", "10.3.0.5", &["DHCP"]),
                ],
            ))
            .unwrap(),
            2
        );
        s.upsert_vm(&vm("vm2", vec![nic(L3, "10.0.0.6", &["Userdata"])]))
            .unwrap();
        s.set_public_ip("l3b", "10.2.0.5", Some("172.20.0.9".into()))
            .unwrap();
        assert!(path.join("vm1.json").is_file());
        assert!(path.join("vm2.json").is_file());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path.join("vm1.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(s.lookup(L3, "10.0.0.5").unwrap().instance_id, "vm1");
        assert_eq!(s.lookup("l3b", "10.2.0.5").unwrap().instance_id, "vm1");
        assert!(s.lookup("l3c", "10.3.0.5").is_none());
        assert!(s.lookup("l3b", "10.0.0.5").is_none());
        assert!(s.lookup(L3, "not an ip").is_none());
        std::fs::write(path.join("broken.json"), "{").unwrap();
        std::fs::write(path.join("ignored.txt"), "x").unwrap();
        drop(s);

        // A restarted agent finds the same records.
        let s = MetadataStore::open(&path).unwrap();
        assert_eq!(s.skipped().len(), 1, "{:?}", s.skipped());
        assert_eq!(s.vm_uuids(), vec!["vm1".to_string(), "vm2".to_string()]);
        let r = s.lookup("l3b", "10.2.0.5").unwrap();
        assert_eq!(r.public_ipv4.as_deref(), Some("172.20.0.9"));
        assert_eq!(r.hostname, "web-1");
        assert_eq!(s.records("vm1").len(), 2);

        // A restart of the VM keeps its EIP; an address taken by another VM moves with its file.
        s.upsert_vm(&vm(
            "vm1",
            vec![
                nic(L3, "10.0.0.5", &["Userdata"]),
                nic("l3b", "10.2.0.5", &["Userdata"]),
            ],
        ))
        .unwrap();
        assert_eq!(
            s.lookup("l3b", "10.2.0.5").unwrap().public_ipv4.as_deref(),
            Some("172.20.0.9")
        );
        s.upsert_vm(&vm("vm3", vec![nic(L3, "10.0.0.6", &["Userdata"])]))
            .unwrap();
        assert_eq!(s.lookup(L3, "10.0.0.6").unwrap().instance_id, "vm3");
        assert!(!path.join("vm2.json").exists());
        assert!(s.records("vm2").is_empty());

        // Removal.
        assert!(s.remove_vm("vm1").unwrap());
        assert!(!s.remove_vm("vm1").unwrap());
        assert!(!path.join("vm1.json").exists());
        assert!(s.lookup(L3, "10.0.0.5").is_none());
        // A VM without a Userdata NIC is not kept.
        assert_eq!(
            s.upsert_vm(&vm("vm4", vec![nic(L3, "10.0.0.7", &["DHCP"])]))
                .unwrap(),
            0
        );
        assert!(!path.join("vm4.json").exists());
        // Names that are not uuids never name files.
        assert!(s
            .upsert_vm(&vm("../x", vec![nic(L3, "10.0.0.8", &["Userdata"])]))
            .is_err());
        assert!(s
            .upsert_vm(&vm("vm5", vec![nic(L3, "10.0.0.x", &["Userdata"])]))
            .is_err());

        let s = MetadataStore::open(&path).unwrap();
        assert_eq!(s.vm_uuids(), vec!["vm3".to_string()]);
    }
}
