//! The EC2-style metadata server of the flat network provider: `http://169.254.169.254/` inside
//! each L3 network's namespace, served by the agent itself (the original ran one lighttpd per
//! namespace over a tree of files).
//!
//! - [`MetadataStore`]: what each VM is told, keyed by (L3 uuid, VM IP), one JSON file per VM
//!   under a directory (`/var/lib/zstack/kvmagent/metadata/<vm>.json`, see [`store_dir`]), loaded
//!   at construction so a restarted agent keeps serving the VMs that kept running. Shared by
//!   every listener (one per L3 namespace); lookups take a read lock for a hash lookup only.
//! - [`router`]: the HTTP answers, EC2's layout (`/`, `/latest/`, `/latest/meta-data/...`,
//!   `/latest/user-data`, `/latest/dynamic/instance-identity/document`, IMDSv2 tokens from
//!   `PUT /latest/api/token`). The VM is the connection's source address: the L3 namespace
//!   only sees the VMs of its L3, and their addresses are the agent's to give. Headers such as
//!   `X-Forwarded-For` are never trusted (a token request carrying one is refused, as EC2 does).
//! - [`serve_in_netns`]: binds the listening socket inside a named network namespace and serves
//!   it on a dedicated thread that runs its own single-threaded tokio runtime; the returned
//!   [`MetadataListener`] stops it (`stop`, or dropping it).
//!
//! Why a runtime per listener rather than the agent's: `setns` only moves the calling thread, so
//! the socket has to be made on a thread of its own anyway; once made, a socket stays in its
//! namespace whichever thread uses it. Serving it on a runtime of its own keeps each L3's server
//! independent of the agent's API runtime (a VM flooding its metadata server cannot take threads
//! from the agent's API, and the agent's runtime needs no handle passed around), lets the caller
//! start and stop listeners from synchronous code (the VM and network handlers run on the
//! blocking pool), and stopping one is dropping its runtime. The cost is one thread per L3
//! namespace on the host. [`bind_in_netns`] is public for a caller that prefers to serve the
//! socket on a runtime of its own choosing.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::{Deserialize, Serialize};
use zstack_common::Layout;

pub use zstack_common::agent_proto::{NicSpec, VmMetadata, VmSpec};

/// The address VMs ask.
pub const METADATA_IP: &str = "169.254.169.254";
/// The flat network service that makes an L3's VMs known to the metadata server.
pub const USERDATA_SERVICE: &str = "Userdata";
/// IMDSv2: the token a request carries.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// IMDSv2: the lifetime asked for in `PUT /latest/api/token`, and answered with the token.
pub const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// EC2's longest token lifetime (6 hours).
pub const MAX_TOKEN_TTL_SECS: u64 = 21_600;
/// Tokens kept per listener (per L3 namespace), and per VM. Expired tokens are pruned at every
/// `PUT`; beyond the limits the token nearest its end is dropped (a VM asking for tokens in a
/// loop only ever drops its own).
const MAX_TOKENS: usize = 4096;
const MAX_TOKENS_PER_VM: usize = 32;
/// How long a stopped listener lets requests in flight finish before its runtime is dropped.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// The version of the files the store writes.
const FILE_VERSION: u32 = 1;

/// The API versions `/` lists (EC2's), besides `latest`. Each answers as `latest` does.
pub const VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
    "2024-04-11",
];

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
    fn ssh_keys(&self) -> impl Iterator<Item = &str> {
        self.ssh_key
            .as_deref()
            .unwrap_or("")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
    }
}

/// The user data a VM is served: its own; else, when it has an ssh key or a root password, a
/// `#cloud-config` that authorizes the key (for root too, as the original did) and sets the
/// password from its hash; else none.
pub fn user_data_for(
    user_data: Option<&str>,
    ssh_key: Option<&str>,
    root_password_hash: Option<&str>,
) -> Option<String> {
    if let Some(u) = user_data.filter(|u| !u.is_empty()) {
        return Some(u.to_string());
    }
    let keys: Vec<&str> = ssh_key
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let hash = root_password_hash.filter(|h| !h.is_empty());
    if keys.is_empty() && hash.is_none() {
        return None;
    }
    // A JSON string is a YAML double-quoted scalar: a key comment with `#` or `: ` in it stays
    // part of the key, and a hash's `$` needs no escaping.
    let quoted = |v: &str| serde_json::Value::from(v).to_string();
    let mut text = String::from("#cloud-config\n");
    if !keys.is_empty() {
        text.push_str("ssh_authorized_keys:\n");
        for k in keys {
            text.push_str("  - ");
            text.push_str(&quoted(k));
            text.push('\n');
        }
    }
    text.push_str("disable_root: false\n");
    if let Some(h) = hash {
        text.push_str("ssh_pwauth: true\nchpasswd:\n  expire: false\n  users:\n");
        text.push_str(&format!(
            "    - name: root\n      type: hash\n      password: {}\n",
            quoted(h)
        ));
    }
    Some(text)
}

/// The records of a VM: one per NIC whose L3 has the Userdata service.
pub fn records_of(spec: &VmSpec) -> Result<Vec<VmRecord>, String> {
    let mut out = Vec::new();
    for nic in &spec.nics {
        if !nic
            .services
            .iter()
            .any(|s| s.eq_ignore_ascii_case(USERDATA_SERVICE))
        {
            continue;
        }
        let ip: IpAddr = nic.ip.trim().parse().map_err(|_| {
            format!(
                "VM {}: NIC {} has no valid IP ({:?})",
                spec.uuid, nic.uuid, nic.ip
            )
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
            ),
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
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, String> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))?;
        }
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
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
                Err(e) => skipped.push(e),
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
    pub fn upsert_vm(&self, spec: &VmSpec) -> Result<usize, String> {
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
    pub fn remove_vm(&self, vm_uuid: &str) -> Result<bool, String> {
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
    ) -> Result<bool, String> {
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
    ) -> Result<(), String> {
        let path = self.file_of(vm);
        let records: Vec<VmRecord> = records.cloned().collect();
        if records.is_empty() {
            return match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
            };
        }
        let file = VmFile {
            version: FILE_VERSION,
            vm_uuid: vm.to_string(),
            records,
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
        zstack_common::fsutil::atomic_write(&path, &text, 0o600)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// A VM uuid names a file: letters, digits, `-` and `_` only.
fn check_vm_uuid(vm: &str) -> Result<(), String> {
    if vm.is_empty()
        || vm.len() > 128
        || !vm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!("{vm:?} is not a VM uuid"));
    }
    Ok(())
}

fn load_file(path: &Path) -> Result<VmFile, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let f: VmFile =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if f.version != FILE_VERSION {
        return Err(format!("{}: unknown version {}", path.display(), f.version));
    }
    if f.vm_uuid != stem || f.records.iter().any(|r| r.instance_id != stem) {
        return Err(format!("{}: records of another VM", path.display()));
    }
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// IMDSv2 tokens

struct TokenEntry {
    src: IpAddr,
    instance_id: String,
    expires: Instant,
}

#[derive(Default)]
struct Tokens {
    map: HashMap<String, TokenEntry>,
}

impl Tokens {
    fn issue(
        &mut self,
        token: String,
        src: IpAddr,
        instance_id: &str,
        ttl: Duration,
        now: Instant,
    ) {
        self.map.retain(|_, t| t.expires > now);
        let mine = self.map.values().filter(|t| t.src == src).count();
        if mine >= MAX_TOKENS_PER_VM {
            self.drop_nearest_end(|t| t.src == src);
        }
        if self.map.len() >= MAX_TOKENS {
            self.drop_nearest_end(|_| true);
        }
        self.map.insert(
            token,
            TokenEntry {
                src,
                instance_id: instance_id.to_string(),
                expires: now + ttl,
            },
        );
    }

    fn drop_nearest_end(&mut self, which: impl Fn(&TokenEntry) -> bool) {
        let victim = self
            .map
            .iter()
            .filter(|(_, t)| which(t))
            .min_by_key(|(_, t)| t.expires)
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.map.remove(&k);
        }
    }

    /// A token is valid for the VM it was given to (same source address, same instance), until
    /// its TTL ends.
    fn valid(&self, token: &str, src: IpAddr, instance_id: &str, now: Instant) -> bool {
        self.map
            .get(token)
            .is_some_and(|t| t.src == src && t.instance_id == instance_id && now < t.expires)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Paths

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    /// `/`
    Versions,
    /// `/latest`, `/latest/`
    Categories,
    /// `/latest/user-data`
    UserData,
    /// `/latest/meta-data/...`: the segments, and whether the path ended with `/`.
    MetaData(Vec<&'a str>, bool),
    /// `/latest/dynamic/...`
    Dynamic(Vec<&'a str>, bool),
    /// `/latest/api/token`
    Token,
}

fn parse_path(path: &str) -> Option<Target<'_>> {
    let p = path.strip_prefix('/')?;
    if p.is_empty() {
        return Some(Target::Versions);
    }
    let (version, rest) = p.split_once('/').unwrap_or((p, ""));
    if version != "latest" && !VERSIONS.contains(&version) {
        return None;
    }
    if rest.is_empty() {
        return Some(Target::Categories);
    }
    if rest == "user-data" {
        return Some(Target::UserData);
    }
    if rest == "api/token" && version == "latest" {
        return Some(Target::Token);
    }
    let tree = |name: &str| -> Option<(Vec<&str>, bool)> {
        let after = rest.strip_prefix(name)?;
        if !after.is_empty() && !after.starts_with('/') {
            return None;
        }
        Some((
            after.split('/').filter(|s| !s.is_empty()).collect(),
            after.ends_with('/'),
        ))
    };
    if let Some((segs, slash)) = tree("meta-data") {
        return Some(Target::MetaData(segs, slash));
    }
    if let Some((segs, slash)) = tree("dynamic") {
        return Some(Target::Dynamic(segs, slash));
    }
    None
}

/// A node of the meta-data tree: a value, or a directory's listing.
enum Node {
    Leaf(String),
    Dir(String),
}

fn meta_data(rec: &VmRecord, segs: &[&str]) -> Option<Node> {
    let keys: Vec<&str> = rec.ssh_keys().collect();
    let key_index = |s: &str| -> Option<usize> {
        let i: usize = s.parse().ok()?;
        (i < keys.len() && s == i.to_string()).then_some(i)
    };
    Some(match segs {
        [] => {
            let mut l = vec!["hostname", "instance-id", "local-hostname", "local-ipv4"];
            if !rec.mac.is_empty() {
                l.push("mac");
            }
            if !rec.availability_zone.is_empty() {
                l.push("placement/");
            }
            if rec.public_ipv4.is_some() {
                l.push("public-ipv4");
            }
            if !keys.is_empty() {
                l.push("public-keys/");
            }
            Node::Dir(l.join("\n"))
        }
        ["instance-id"] => Node::Leaf(rec.instance_id.clone()),
        ["hostname"] | ["local-hostname"] => Node::Leaf(rec.hostname.clone()),
        ["local-ipv4"] => Node::Leaf(rec.local_ipv4.clone()),
        ["mac"] if !rec.mac.is_empty() => Node::Leaf(rec.mac.clone()),
        ["public-ipv4"] => Node::Leaf(rec.public_ipv4.clone()?),
        ["placement"] if !rec.availability_zone.is_empty() => {
            Node::Dir("availability-zone".to_string())
        }
        ["placement", "availability-zone"] if !rec.availability_zone.is_empty() => {
            Node::Leaf(rec.availability_zone.clone())
        }
        ["public-keys"] if !keys.is_empty() => Node::Dir(
            (0..keys.len())
                .map(|i| format!("{i}={}", key_name(i)))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        ["public-keys", i] => {
            key_index(i)?;
            Node::Dir("openssh-key".to_string())
        }
        ["public-keys", i, "openssh-key"] => Node::Leaf(keys[key_index(i)?].to_string()),
        _ => return None,
    })
}

/// The names `public-keys/` lists: `0=zstack`, `1=zstack-1`, ...
fn key_name(i: usize) -> String {
    if i == 0 {
        "zstack".to_string()
    } else {
        format!("zstack-{i}")
    }
}

fn dynamic(rec: &VmRecord, segs: &[&str]) -> Option<Node> {
    Some(match segs {
        [] => Node::Dir("instance-identity/".to_string()),
        ["instance-identity"] => Node::Dir("document".to_string()),
        ["instance-identity", "document"] => {
            let mut doc = serde_json::Map::new();
            if !rec.availability_zone.is_empty() {
                doc.insert(
                    "availabilityZone".into(),
                    rec.availability_zone.clone().into(),
                );
            }
            doc.insert("instanceId".into(), rec.instance_id.clone().into());
            doc.insert("privateIp".into(), rec.local_ipv4.clone().into());
            doc.insert("version".into(), "2017-09-30".into());
            Node::Leaf(serde_json::to_string_pretty(&doc).ok()?)
        }
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Answers

/// An answer, before it becomes an HTTP response (the logic is tested without sockets).
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: String,
    ttl: Option<u64>,
    allow: Option<&'static str>,
}

impl Reply {
    fn text(body: String) -> Self {
        Reply {
            status: StatusCode::OK,
            content_type: "text/plain",
            body,
            ttl: None,
            allow: None,
        }
    }

    fn error(status: StatusCode) -> Self {
        Reply {
            status,
            content_type: "text/plain",
            body: format!(
                "{} {}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
            ttl: None,
            allow: None,
        }
    }

    fn not_allowed(allow: &'static str) -> Self {
        Reply {
            allow: Some(allow),
            ..Reply::error(StatusCode::METHOD_NOT_ALLOWED)
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut resp = Response::new(Body::from(self.body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        if let Some(ttl) = self.ttl {
            h.insert(TOKEN_TTL_HEADER, HeaderValue::from(ttl));
        }
        if let Some(allow) = self.allow {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

/// The metadata server of one L3 network.
struct Imds {
    store: Arc<MetadataStore>,
    l3: String,
    tokens: Mutex<Tokens>,
}

impl Imds {
    fn tokens(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answer(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        src: IpAddr,
        now: Instant,
    ) -> Reply {
        let src = src.to_canonical();
        let Some(target) = parse_path(path) else {
            return Reply::error(StatusCode::NOT_FOUND);
        };
        let record = self.store.lookup_addr(&self.l3, src);
        if target == Target::Token {
            if method != Method::PUT {
                return Reply::not_allowed("PUT");
            }
            // EC2 refuses token requests that went through a proxy.
            if headers.contains_key("x-forwarded-for") {
                return Reply::error(StatusCode::FORBIDDEN);
            }
            let Some(rec) = record else {
                return Reply::error(StatusCode::NOT_FOUND);
            };
            let ttl = headers
                .get(TOKEN_TTL_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|t| (1..=MAX_TOKEN_TTL_SECS).contains(t));
            let Some(ttl) = ttl else {
                return Reply::error(StatusCode::BAD_REQUEST);
            };
            let Ok(token) = zstack_common::secret::random_hex(32) else {
                return Reply::error(StatusCode::INTERNAL_SERVER_ERROR);
            };
            self.tokens().issue(
                token.clone(),
                src,
                &rec.instance_id,
                Duration::from_secs(ttl),
                now,
            );
            return Reply {
                ttl: Some(ttl),
                ..Reply::text(token)
            };
        }
        if method != Method::GET && method != Method::HEAD {
            return Reply::not_allowed("GET, HEAD");
        }
        let Some(rec) = record else {
            // A stranger learns the versions, nothing else.
            return if target == Target::Versions {
                versions()
            } else {
                Reply::error(StatusCode::NOT_FOUND)
            };
        };
        match headers.get(TOKEN_HEADER) {
            Some(t) => {
                let ok = t
                    .to_str()
                    .is_ok_and(|t| self.tokens().valid(t.trim(), src, &rec.instance_id, now));
                if !ok {
                    return Reply::error(StatusCode::UNAUTHORIZED);
                }
            }
            None if rec.token_required => return Reply::error(StatusCode::UNAUTHORIZED),
            None => {}
        }
        let node = match target {
            Target::Versions => return versions(),
            Target::Categories => {
                let mut l = vec!["dynamic", "meta-data"];
                if rec.user_data.is_some() {
                    l.push("user-data");
                }
                return Reply::text(l.join("\n"));
            }
            Target::UserData => {
                return match &rec.user_data {
                    Some(u) => Reply {
                        content_type: "application/octet-stream",
                        ..Reply::text(u.clone())
                    },
                    None => Reply::error(StatusCode::NOT_FOUND),
                }
            }
            Target::MetaData(segs, slash) => meta_data(&rec, &segs).map(|n| (n, slash)),
            Target::Dynamic(segs, slash) => dynamic(&rec, &segs).map(|n| (n, slash)),
            Target::Token => None,
        };
        match node {
            Some((Node::Dir(listing), _)) => Reply::text(listing),
            Some((Node::Leaf(value), false)) => Reply::text(value),
            // A value is not a directory.
            Some((Node::Leaf(_), true)) | None => Reply::error(StatusCode::NOT_FOUND),
        }
    }
}

fn versions() -> Reply {
    let mut l: Vec<&str> = VERSIONS.to_vec();
    l.push("latest");
    Reply::text(l.join("\n"))
}

async fn handle(
    State(imds): State<Arc<Imds>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    imds.answer(
        req.method(),
        req.uri().path(),
        req.headers(),
        peer.ip(),
        Instant::now(),
    )
    .into_response()
}

/// The metadata server of L3 `l3_uuid`, answering from `store`. It identifies VMs by the
/// connection's source address, so it must be served with
/// `into_make_service_with_connect_info::<SocketAddr>()` ([`serve_listener`] and
/// [`serve_in_netns`] do). IMDSv2 tokens live in the router (in memory, per L3).
pub fn router(store: Arc<MetadataStore>, l3_uuid: String) -> Router {
    let imds = Arc::new(Imds {
        store,
        l3: l3_uuid,
        tokens: Mutex::new(Tokens::default()),
    });
    Router::new().fallback(handle).with_state(imds)
}

// ---------------------------------------------------------------------------------------------
// Listeners

/// A running metadata server: its thread and runtime. [`MetadataListener::stop`] (or dropping
/// it) closes the socket; stop it before deleting the L3's namespace (a namespace lives on, out
/// of sight, as long as a socket in it is open).
pub struct MetadataListener {
    addr: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl MetadataListener {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the server still runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the server and waits until its socket is closed: requests in flight get
    /// a second (`STOP_GRACE`) to finish.
    pub fn stop(mut self) -> Result<(), String> {
        self.signal();
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| "the metadata server's thread panicked".to_string()),
            None => Ok(()),
        }
    }

    fn signal(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
    }
}

impl Drop for MetadataListener {
    /// Stops the server without waiting for its thread.
    fn drop(&mut self) {
        self.signal();
    }
}

/// Serves `app` on `listener` (any namespace) on a new thread with its own single-threaded
/// tokio runtime; callable from anywhere, inside a runtime or not.
pub fn serve_listener(listener: TcpListener, app: Router) -> Result<MetadataListener, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make the listening socket non-blocking: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening socket's address: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot make a runtime for the metadata server: {e}"))?;
    let listener = {
        let _in_rt = rt.enter();
        tokio::net::TcpListener::from_std(listener)
            .map_err(|e| format!("cannot register the listening socket: {e}"))?
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("zstack-imds".to_string())
        .spawn(move || {
            rt.block_on(async move {
                let mut graceful = rx.clone();
                let mut deadline = rx;
                let serve = axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async move {
                    // A dropped sender stops the server too.
                    let _ = graceful.wait_for(|stop| *stop).await;
                });
                tokio::select! {
                    _ = async move { serve.await } => {}
                    _ = async move {
                        let _ = deadline.wait_for(|stop| *stop).await;
                        tokio::time::sleep(STOP_GRACE).await;
                    } => {}
                }
            });
            // Dropping the runtime here closes every connection left.
        })
        .map_err(|e| format!("cannot start the metadata server's thread: {e}"))?;
    Ok(MetadataListener {
        addr,
        stop: Some(tx),
        thread: Some(thread),
    })
}

/// `/var/run/netns/<ns>` (what `ip netns add` makes), or `ns` itself when it is an absolute path
/// (`/proc/<pid>/ns/net`).
fn netns_path(ns: &str) -> Result<PathBuf, String> {
    if ns.starts_with('/') {
        return Ok(PathBuf::from(ns));
    }
    if ns.is_empty() || ns == "." || ns == ".." || ns.contains('/') {
        return Err(format!("{ns:?} is not a network namespace name"));
    }
    Ok(Path::new("/var/run/netns").join(ns))
}

/// A TCP socket listening on `addr` inside network namespace `ns`: a short-lived thread enters
/// the namespace (`setns` moves only the calling thread), binds, and ends; the socket stays in
/// that namespace. The address must exist there (`169.254.169.254/32` on the L3's inner device).
pub fn bind_in_netns(ns: &str, addr: SocketAddr) -> Result<TcpListener, String> {
    let path = netns_path(ns)?;
    let file = File::open(&path)
        .map_err(|e| format!("cannot open network namespace {}: {e}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("cannot enter network namespace {ns}: {e}"))?;
            TcpListener::bind(addr)
                .map_err(|e| format!("cannot listen on {addr} in network namespace {ns}: {e}"))
        })
        .join()
        .map_err(|_| format!("the thread binding {addr} in {ns} panicked"))?
    })
}

/// Serves `app` on `addr` inside network namespace `ns` (see [`bind_in_netns`] and
/// [`serve_listener`]). Returns once the socket listens.
pub fn serve_in_netns(ns: &str, addr: SocketAddr, app: Router) -> Result<MetadataListener, String> {
    serve_listener(bind_in_netns(ns, addr)?, app)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use zstack_common::agent_proto::DiskSpec;

    const L3: &str = "l3aaaa";

    fn nic(l3: &str, ip: &str, services: &[&str]) -> NicSpec {
        NicSpec {
            uuid: format!("nic-{ip}"),
            l3_network_uuid: l3.to_string(),
            mac: "fa:16:3e:00:00:01".to_string(),
            ip: ip.to_string(),
            netmask: "255.255.255.0".to_string(),
            gateway: "10.0.0.1".to_string(),
            device_id: 0,
            physical_interface: "eth0".to_string(),
            services: services.iter().map(|s| s.to_string()).collect(),
            dns_domain: None,
            dhcp_server_ip: None,
        }
    }

    fn vm(uuid: &str, nics: Vec<NicSpec>) -> VmSpec {
        VmSpec {
            uuid: uuid.to_string(),
            name: "vm".to_string(),
            cpu_num: 1,
            memory_size: 1 << 30,
            root_volume: DiskSpec {
                volume_uuid: "root".to_string(),
                r#type: "Root".to_string(),
                install_path: "/x".to_string(),
                size: 1,
                format: "qcow2".to_string(),
                device_id: 0,
                image_url: None,
                image_sha256: None,
                image_format: None,
                image_uuid: None,
                primary_storage_url: None,
                cache_mode: "none".to_string(),
            },
            data_volumes: vec![],
            nics,
            user_data: Some("#!/bin/sh\necho hi\n".to_string()),
            metadata: VmMetadata {
                hostname: "web-1".to_string(),
                availability_zone: "zone-a".to_string(),
                ssh_key: Some("ssh-ed25519 AAAAC3 me@host".to_string()),
                root_password_hash: None,
                token_required: false,
            },
        }
    }

    fn store() -> (tempfile::TempDir, Arc<MetadataStore>) {
        let dir = tempfile::tempdir().unwrap();
        let s = MetadataStore::open(dir.path().join("metadata")).unwrap();
        (dir, Arc::new(s))
    }

    fn imds(store: &Arc<MetadataStore>) -> Imds {
        Imds {
            store: store.clone(),
            l3: L3.to_string(),
            tokens: Mutex::new(Tokens::default()),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn get(i: &Imds, path: &str, src: &str) -> Reply {
        i.answer(
            &Method::GET,
            path,
            &HeaderMap::new(),
            ip(src),
            Instant::now(),
        )
    }

    fn with_token(i: &Imds, path: &str, src: &str, token: &str, now: Instant) -> Reply {
        let mut h = HeaderMap::new();
        h.insert(TOKEN_HEADER, HeaderValue::from_str(token).unwrap());
        i.answer(&Method::GET, path, &h, ip(src), now)
    }

    fn put_token(i: &Imds, src: &str, ttl: Option<&str>, now: Instant) -> Reply {
        let mut h = HeaderMap::new();
        if let Some(t) = ttl {
            h.insert(TOKEN_TTL_HEADER, HeaderValue::from_str(t).unwrap());
        }
        i.answer(&Method::PUT, "/latest/api/token", &h, ip(src), now)
    }

    #[test]
    fn paths() {
        assert_eq!(parse_path("/"), Some(Target::Versions));
        assert_eq!(parse_path("/latest"), Some(Target::Categories));
        assert_eq!(parse_path("/latest/"), Some(Target::Categories));
        assert_eq!(parse_path("/2009-04-04/"), Some(Target::Categories));
        assert_eq!(parse_path("/latest/user-data"), Some(Target::UserData));
        assert_eq!(parse_path("/2021-03-23/user-data"), Some(Target::UserData));
        assert_eq!(parse_path("/latest/api/token"), Some(Target::Token));
        assert_eq!(parse_path("/2009-04-04/api/token"), None);
        assert_eq!(
            parse_path("/latest/meta-data"),
            Some(Target::MetaData(vec![], false))
        );
        assert_eq!(
            parse_path("/latest/meta-data/"),
            Some(Target::MetaData(vec![], true))
        );
        assert_eq!(
            parse_path("/2009-04-04/meta-data/public-keys/0/openssh-key"),
            Some(Target::MetaData(
                vec!["public-keys", "0", "openssh-key"],
                false
            ))
        );
        assert_eq!(
            parse_path("/latest/meta-data//instance-id"),
            Some(Target::MetaData(vec!["instance-id"], false))
        );
        assert_eq!(parse_path("/latest/meta-datax"), None);
        assert_eq!(parse_path("/1999-01-01/meta-data/"), None);
        assert_eq!(parse_path("/foo"), None);
        assert_eq!(parse_path("/latest/user-data/x"), None);
        assert_eq!(
            parse_path("/latest/dynamic/instance-identity/document"),
            Some(Target::Dynamic(
                vec!["instance-identity", "document"],
                false
            ))
        );
    }

    #[test]
    fn answers_like_ec2() {
        let (_d, s) = store();
        s.upsert_vm(&vm(
            "vm1",
            vec![
                nic(L3, "10.0.0.5", &["DHCP", "Userdata"]),
                nic("other", "10.1.0.5", &["DHCP"]),
            ],
        ))
        .unwrap();
        let i = imds(&s);
        let src = "10.0.0.5";
        let body = |p: &str| {
            let r = get(&i, p, src);
            assert_eq!(r.status, StatusCode::OK, "{p}: {r:?}");
            r.body
        };
        let versions = body("/");
        assert!(versions.lines().any(|l| l == "2009-04-04"), "{versions}");
        assert!(versions.lines().any(|l| l == "2021-01-03"), "{versions}");
        assert_eq!(versions.lines().last(), Some("latest"));
        assert_eq!(body("/latest/"), "dynamic\nmeta-data\nuser-data");
        assert_eq!(
            body("/latest/meta-data/"),
            "hostname\ninstance-id\nlocal-hostname\nlocal-ipv4\nmac\nplacement/\npublic-keys/"
        );
        assert_eq!(body("/latest/meta-data"), body("/latest/meta-data/"));
        assert_eq!(body("/latest/meta-data/instance-id"), "vm1");
        assert_eq!(body("/2009-04-04/meta-data/instance-id"), "vm1");
        assert_eq!(body("/latest/meta-data/hostname"), "web-1");
        assert_eq!(body("/latest/meta-data/local-hostname"), "web-1");
        assert_eq!(body("/latest/meta-data/local-ipv4"), "10.0.0.5");
        assert_eq!(body("/latest/meta-data/placement/"), "availability-zone");
        assert_eq!(
            body("/latest/meta-data/placement/availability-zone"),
            "zone-a"
        );
        assert_eq!(body("/latest/meta-data/public-keys/"), "0=zstack");
        assert_eq!(body("/latest/meta-data/public-keys/0/"), "openssh-key");
        assert_eq!(
            body("/latest/meta-data/public-keys/0/openssh-key"),
            "ssh-ed25519 AAAAC3 me@host"
        );
        assert_eq!(body("/latest/user-data"), "#!/bin/sh\necho hi\n");
        assert_eq!(
            get(&i, "/latest/user-data", src).content_type,
            "application/octet-stream"
        );
        let doc: serde_json::Value =
            serde_json::from_str(&body("/latest/dynamic/instance-identity/document")).unwrap();
        assert_eq!(doc["instanceId"], "vm1");
        assert_eq!(doc["privateIp"], "10.0.0.5");
        for missing in [
            "/latest/meta-data/public-ipv4",
            "/latest/meta-data/public-keys/1/openssh-key",
            "/latest/meta-data/public-keys/00/openssh-key",
            "/latest/meta-data/instance-id/",
            "/latest/meta-data/nothing",
            "/latest/nothing",
            "/nothing",
            "/1999-01-01/meta-data/instance-id",
        ] {
            assert_eq!(
                get(&i, missing, src).status,
                StatusCode::NOT_FOUND,
                "{missing}"
            );
        }
        // Another L3's NIC is not served here; an unknown VM sees only the versions.
        assert_eq!(
            get(&i, "/latest/meta-data/instance-id", "10.1.0.5").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(get(&i, "/", "10.0.0.99").status, StatusCode::OK);
        for p in ["/latest/", "/latest/meta-data/", "/latest/user-data"] {
            assert_eq!(get(&i, p, "10.0.0.99").status, StatusCode::NOT_FOUND, "{p}");
        }
        // Methods.
        let r = i.answer(
            &Method::POST,
            "/latest/meta-data/",
            &HeaderMap::new(),
            ip(src),
            Instant::now(),
        );
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            get(&i, "/latest/api/token", src).status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        // An EIP shows as public-ipv4, and goes again.
        assert!(s
            .set_public_ip(L3, "10.0.0.5", Some("172.20.0.9".into()))
            .unwrap());
        assert_eq!(body("/latest/meta-data/public-ipv4"), "172.20.0.9");
        assert!(body("/latest/meta-data/").contains("\npublic-ipv4\n"));
        assert!(s.set_public_ip(L3, "10.0.0.5", None).unwrap());
        assert_eq!(
            get(&i, "/latest/meta-data/public-ipv4", src).status,
            StatusCode::NOT_FOUND
        );
        assert!(!s.set_public_ip(L3, "10.0.0.6", None).unwrap());
    }

    #[test]
    fn a_root_password_becomes_a_cloud_config_with_its_hash() {
        let hash = "$6$rounds=5000$salt$abc/def";
        let ud = user_data_for(None, None, Some(hash)).unwrap();
        assert_eq!(
            ud,
            "#cloud-config\ndisable_root: false\nssh_pwauth: true\nchpasswd:\n  expire: false\n  users:\n    - name: root\n      type: hash\n      password: \"$6$rounds=5000$salt$abc/def\"\n"
        );
        let both = user_data_for(None, Some("ssh-ed25519 K"), Some(hash)).unwrap();
        assert!(
            both.contains("ssh_authorized_keys:\n  - \"ssh-ed25519 K\"")
                && both.contains("type: hash")
        );
        // The VM's own user data always wins.
        assert_eq!(
            user_data_for(Some("#!/bin/sh"), Some("k"), Some(hash)).as_deref(),
            Some("#!/bin/sh")
        );
        assert_eq!(user_data_for(None, None, None), None);
    }

    #[test]
    fn user_data_defaults() {
        let (_d, s) = store();
        let mut spec = vm("vm2", vec![nic(L3, "10.0.0.6", &["Userdata"])]);
        spec.user_data = None;
        spec.metadata.ssh_key = Some("ssh-rsa AAAA x # y: z\n\nssh-ed25519 BBBB".into());
        spec.metadata.hostname = String::new();
        spec.metadata.availability_zone = String::new();
        s.upsert_vm(&spec).unwrap();
        let i = imds(&s);
        let ud = get(&i, "/latest/user-data", "10.0.0.6").body;
        assert_eq!(
            ud,
            "#cloud-config\nssh_authorized_keys:\n  - \"ssh-rsa AAAA x # y: z\"\n  - \"ssh-ed25519 BBBB\"\ndisable_root: false\n"
        );
        assert_eq!(
            get(&i, "/latest/meta-data/public-keys/", "10.0.0.6").body,
            "0=zstack\n1=zstack-1"
        );
        assert_eq!(
            get(
                &i,
                "/latest/meta-data/public-keys/1/openssh-key",
                "10.0.0.6"
            )
            .body,
            "ssh-ed25519 BBBB"
        );
        assert_eq!(
            get(&i, "/latest/meta-data/hostname", "10.0.0.6").body,
            "10-0-0-6"
        );
        // No zone: no placement.
        assert!(!get(&i, "/latest/meta-data/", "10.0.0.6")
            .body
            .contains("placement"));

        spec.metadata.ssh_key = None;
        s.upsert_vm(&spec).unwrap();
        assert_eq!(
            get(&i, "/latest/user-data", "10.0.0.6").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(get(&i, "/latest/", "10.0.0.6").body, "dynamic\nmeta-data");
        assert!(!get(&i, "/latest/meta-data/", "10.0.0.6")
            .body
            .contains("public-keys"));
    }

    #[test]
    fn imdsv2_tokens() {
        let (_d, s) = store();
        s.upsert_vm(&vm("vm1", vec![nic(L3, "10.0.0.5", &["Userdata"])]))
            .unwrap();
        s.upsert_vm(&vm("vm2", vec![nic(L3, "10.0.0.6", &["Userdata"])]))
            .unwrap();
        let i = imds(&s);
        let now = Instant::now();
        let path = "/latest/meta-data/instance-id";

        // TTL: required, 1..=21600.
        for bad in [
            None,
            Some("0"),
            Some("21601"),
            Some("-1"),
            Some("abc"),
            Some(""),
        ] {
            assert_eq!(
                put_token(&i, "10.0.0.5", bad, now).status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
        let r = put_token(&i, "10.0.0.5", Some("60"), now);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.ttl, Some(60));
        assert_eq!(r.content_type, "text/plain");
        let token = r.body;
        assert_eq!(token.len(), 64);
        assert_ne!(put_token(&i, "10.0.0.5", Some("21600"), now).body, token);

        let ok = with_token(&i, path, "10.0.0.5", &token, now);
        assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "vm1"));
        // A wrong token, another VM's use of it, an expired one: 401.
        assert_eq!(
            with_token(&i, path, "10.0.0.5", "nope", now).status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            with_token(&i, path, "10.0.0.6", &token, now).status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            with_token(&i, path, "10.0.0.5", &token, now + Duration::from_secs(59)).status,
            StatusCode::OK
        );
        assert_eq!(
            with_token(&i, path, "10.0.0.5", &token, now + Duration::from_secs(60)).status,
            StatusCode::UNAUTHORIZED
        );
        // A token of a VM that went, on an address given to another VM: 401.
        let t2 = put_token(&i, "10.0.0.6", Some("600"), now).body;
        s.remove_vm("vm2").unwrap();
        s.upsert_vm(&vm("vm3", vec![nic(L3, "10.0.0.6", &["Userdata"])]))
            .unwrap();
        assert_eq!(
            with_token(&i, path, "10.0.0.6", &t2, now).status,
            StatusCode::UNAUTHORIZED
        );

        // Unknown VMs get no token; proxied token requests are refused.
        assert_eq!(
            put_token(&i, "10.0.0.99", Some("60"), now).status,
            StatusCode::NOT_FOUND
        );
        let mut h = HeaderMap::new();
        h.insert(TOKEN_TTL_HEADER, HeaderValue::from_static("60"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.5"));
        assert_eq!(
            i.answer(&Method::PUT, "/latest/api/token", &h, ip("10.0.0.99"), now)
                .status,
            StatusCode::FORBIDDEN
        );

        // token_required: no token, 401; a token, served.
        let mut spec = vm("vm1", vec![nic(L3, "10.0.0.5", &["Userdata"])]);
        spec.metadata.token_required = true;
        s.upsert_vm(&spec).unwrap();
        assert_eq!(get(&i, path, "10.0.0.5").status, StatusCode::UNAUTHORIZED);
        assert_eq!(get(&i, "/", "10.0.0.5").status, StatusCode::UNAUTHORIZED);
        let t = put_token(&i, "10.0.0.5", Some("60"), now).body;
        assert_eq!(
            with_token(&i, path, "10.0.0.5", &t, now).status,
            StatusCode::OK
        );
    }

    #[test]
    fn tokens_are_bounded() {
        let mut t = Tokens::default();
        let now = Instant::now();
        let a = ip("10.0.0.5");
        for n in 0..(MAX_TOKENS_PER_VM * 3) {
            t.issue(
                format!("a{n}"),
                a,
                "vm1",
                Duration::from_secs(100 + n as u64),
                now,
            );
        }
        assert_eq!(t.len(), MAX_TOKENS_PER_VM);
        // The newest are kept.
        assert!(t.valid(&format!("a{}", MAX_TOKENS_PER_VM * 3 - 1), a, "vm1", now));
        assert!(!t.valid("a0", a, "vm1", now));
        // Expired tokens go at the next issue.
        let later = now + Duration::from_secs(10_000);
        t.issue(
            "b".into(),
            ip("10.0.0.6"),
            "vm2",
            Duration::from_secs(1),
            later,
        );
        assert_eq!(t.len(), 1);
        // The whole table is bounded too.
        for n in 0..(MAX_TOKENS + 10) {
            let src = IpAddr::from([10, 1, (n / 250) as u8, (n % 250) as u8]);
            t.issue(format!("c{n}"), src, "vm", Duration::from_secs(60), later);
        }
        assert_eq!(t.len(), MAX_TOKENS);
    }

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

    /// A raw HTTP/1.1 exchange from source address `src` (bound before connecting, so several
    /// "VMs" can talk to one listener over loopback).
    fn http(server: SocketAddr, src: IpAddr, request: &str) -> (u16, String, String) {
        use nix::sys::socket::{
            bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let IpAddr::V4(src) = src else { panic!() };
        let SocketAddr::V4(server) = server else {
            panic!()
        };
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(std::net::SocketAddrV4::new(src, 0)),
        )
        .unwrap();
        connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(server),
        )
        .unwrap();
        let mut stream = TcpStream::from(fd);
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, head.to_string(), body.to_string())
    }

    fn req(method: &str, path: &str, headers: &str) -> String {
        format!("{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n{headers}\r\n")
    }

    #[test]
    fn serves_by_source_address_over_tcp() {
        let (_d, s) = store();
        s.upsert_vm(&vm("vm1", vec![nic(L3, "127.0.0.1", &["Userdata"])]))
            .unwrap();
        s.upsert_vm(&vm("vm2", vec![nic(L3, "127.0.0.2", &["Userdata"])]))
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = serve_listener(listener, router(s.clone(), L3.to_string())).unwrap();
        let addr = server.local_addr();
        assert!(server.is_running());
        let one = ip("127.0.0.1");
        let two = ip("127.0.0.2");

        let path = "/latest/meta-data/instance-id";
        assert_eq!(http(addr, one, &req("GET", path, "")).2, "vm1");
        assert_eq!(http(addr, two, &req("GET", path, "")).2, "vm2");
        // X-Forwarded-For changes nothing.
        let (code, _, body) = http(
            addr,
            two,
            &req("GET", path, "X-Forwarded-For: 127.0.0.1\r\n"),
        );
        assert_eq!((code, body.as_str()), (200, "vm2"));
        // Strangers.
        assert_eq!(http(addr, ip("127.0.0.3"), &req("GET", path, "")).0, 404);
        assert_eq!(http(addr, ip("127.0.0.3"), &req("GET", "/", "")).0, 200);
        // The token flow over HTTP, with its headers.
        let (code, head, token) = http(
            addr,
            one,
            &req(
                "PUT",
                "/latest/api/token",
                "X-aws-ec2-metadata-token-ttl-seconds: 30\r\nContent-Length: 0\r\n",
            ),
        );
        assert_eq!(code, 200, "{head}");
        assert!(head
            .to_ascii_lowercase()
            .contains("x-aws-ec2-metadata-token-ttl-seconds: 30"));
        let (code, _, body) = http(
            addr,
            one,
            &req(
                "GET",
                path,
                &format!("X-aws-ec2-metadata-token: {token}\r\n"),
            ),
        );
        assert_eq!((code, body.as_str()), (200, "vm1"));
        let (code, _, _) = http(
            addr,
            two,
            &req(
                "GET",
                path,
                &format!("X-aws-ec2-metadata-token: {token}\r\n"),
            ),
        );
        assert_eq!(code, 401);
        let (code, head, body) = http(addr, one, &req("HEAD", path, ""));
        assert_eq!((code, body.as_str()), (200, ""), "{head}");

        server.stop().unwrap();
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn dropping_the_listener_stops_it() {
        let (_d, s) = store();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(serve_listener(listener, router(s, L3.to_string())).unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_ok() {
            assert!(Instant::now() < deadline, "still listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn namespace_names() {
        assert_eq!(
            netns_path("zs-l3").unwrap(),
            Path::new("/var/run/netns/zs-l3")
        );
        assert_eq!(
            netns_path("/proc/1/ns/net").unwrap(),
            Path::new("/proc/1/ns/net")
        );
        for bad in ["", ".", "..", "a/b"] {
            assert!(netns_path(bad).is_err(), "{bad}");
        }
        let e = bind_in_netns("zs-no-such-namespace", "127.0.0.1:0".parse().unwrap()).unwrap_err();
        assert!(e.contains("zs-no-such-namespace"), "{e}");
    }
}
