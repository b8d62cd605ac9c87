//! The eBPF datapath: loads Cedille's programs, attaches them to pod cgroups, and pins links
//! and maps under a bpffs directory so that an agent restart adopts them instead of detaching.
//!
//! Layout under the pin directory:
//! ```text
//! maps/CEDILLE_TARGETS, maps/CEDILLE_ORIG_DST, ...   shared by every attachment
//! links/<attachment id>/connect4|connect6|sockops    one directory per attached cgroup
//! links/<attachment id>/sk_lookup                     and its pod's network namespace
//! ```
//! While a link is pinned the kernel keeps it attached, agent or no agent: that is what keeps
//! an enrolled pod's traffic steered (fail-closed) while the agent restarts.

use std::{
    collections::HashMap as StdHashMap,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, SockMap},
    programs::{
        CgroupAttachMode, ProgramError,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use cedille_ebpf::{
    AF_INET, AF_INET6, CONFIG_FAIL_OPEN, OrigDst, PodAddr, RedirectTarget, STAT_COUNT, SockKey,
    Stat,
};
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{
        BPF_FS_MAGIC, BTRFS_SUPER_MAGIC, CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, DEBUGFS_MAGIC,
        EXT4_SUPER_MAGIC, F2FS_SUPER_MAGIC, FUSE_SUPER_MAGIC, FsType, NFS_SUPER_MAGIC,
        OVERLAYFS_SUPER_MAGIC, PROC_SUPER_MAGIC, SECURITYFS_MAGIC, SYSFS_MAGIC, TMPFS_MAGIC,
        TRACEFS_MAGIC, XFS_SUPER_MAGIC, statfs,
    },
};
use tracing::{info, warn};

use crate::netns;

/// Programs attached to every enrolled cgroup, with the name of their pin file.
const PROGRAMS: [(&str, &str); 3] = [
    (cedille_ebpf::programs::CONNECT4, "connect4"),
    (cedille_ebpf::programs::CONNECT6, "connect6"),
    (cedille_ebpf::programs::SOCK_OPS, "sockops"),
];

/// The inbound program, attached to an enrolled pod's network namespace.
const SK_LOOKUP: (&str, &str) = (cedille_ebpf::programs::SK_LOOKUP, "sk_lookup");

/// Where bpffs is conventionally mounted; the agent mounts one here when it finds none (as
/// under `ip netns exec`, which remounts /sys and hides the host's bpffs).
const BPFFS_ROOT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this agent binary was built without its eBPF programs; build it with `cargo xtask build` (see README)"
    )]
    NoEbpfObject,
    #[error(
        "{}: not on a bpffs mount: the nearest existing directory, {}, is on {filesystem}{}; \
         mount one with `mount -t bpf bpf /sys/fs/bpf`",
        path.display(),
        nearest.display(),
        mount_error.as_ref().map(|e| format!(", and mounting a bpffs there failed: {e}")).unwrap_or_default()
    )]
    NotBpffs {
        /// The pin directory.
        path: PathBuf,
        /// Its deepest ancestor (or itself) that exists.
        nearest: PathBuf,
        /// The filesystem `nearest` is on, by name when known.
        filesystem: String,
        /// Why mounting a bpffs at `/sys/fs/bpf` failed, when we tried.
        mount_error: Option<io::Error>,
    },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("loading the eBPF object: {0} (is the kernel 5.15 or newer, and are we root?)")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("pinning link at {}: {source}", path.display())]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("eBPF link of {name}: {source}")]
    Link {
        name: &'static str,
        source: LinkError,
    },
    #[error(
        "invalid attachment id {0:?}: use 1-128 characters of [A-Za-z0-9._-], not starting with '.'"
    )]
    BadId(String),
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DatapathError + '_ {
    move |source| DatapathError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What [`Datapath::attach`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// The programs were attached now.
    Created,
    /// Every link was already pinned by an earlier run and is kept as it is.
    Adopted,
}

/// Counters kept by the eBPF programs, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub redirected: u64,
    pub recorded: u64,
    pub map_update_failed: u64,
    pub inbound_redirected: u64,
    pub inbound_refused: u64,
    pub failed_open: u64,
    pub note_lost: u64,
}

/// Entries in each eBPF map, for metrics and leak checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapCounts {
    pub targets: usize,
    pub original_dsts: usize,
    pub inbound_addrs: usize,
    pub inbound_sockets: usize,
}

pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    links: StdHashMap<String, Vec<PinnedLink>>,
    targets: HashMap<MapData, u64, RedirectTarget>,
    orig: Mutex<HashMap<MapData, SockKey, OrigDst>>,
    stats: PerCpuArray<MapData, u64>,
    inbound: HashMap<MapData, PodAddr, u32>,
    inbound_socks: SockMap<MapData>,
    /// Slots of `inbound_socks` this run has filled.
    inbound_slots: std::collections::BTreeSet<u32>,
    config: Array<MapData, u32>,
}

impl Datapath {
    /// Loads the embedded eBPF object, reusing maps already pinned under `pin_dir`.
    pub fn load(pin_dir: &Path) -> Result<Self> {
        Self::load_object(crate::EBPF_OBJECT, pin_dir)
    }

    pub fn load_object(object: &[u8], pin_dir: &Path) -> Result<Self> {
        if object.is_empty() {
            return Err(DatapathError::NoEbpfObject);
        }
        // Check before creating anything: a pin directory created on the wrong filesystem
        // would only fail later, and less clearly.
        ensure_bpffs(pin_dir)?;
        let maps_dir = pin_dir.join("maps");
        fs::create_dir_all(&maps_dir).map_err(io_err(&maps_dir))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| DatapathError::Io {
            path: PathBuf::from("/sys/devices/system/cpu/possible"),
            source,
        })? as u32;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(
                cedille_ebpf::maps::CONNECTING,
                cpus.min(cedille_ebpf::MAX_CPUS) * cedille_ebpf::SLOTS_PER_CPU,
            )
            .load(object)?;
        for (name, _) in PROGRAMS.iter().chain([&SK_LOOKUP]) {
            let program = ebpf.program_mut(name).ok_or(DatapathError::Program {
                name,
                source: ProgramError::UnexpectedProgramType,
            })?;
            let loaded = match program {
                aya::programs::Program::CgroupSockAddr(p) => p.load(),
                aya::programs::Program::SockOps(p) => p.load(),
                aya::programs::Program::SkLookup(p) => p.load(),
                _ => Err(ProgramError::UnexpectedProgramType),
            };
            loaded.map_err(|source| DatapathError::Program { name, source })?;
        }
        let targets = take_map(&mut ebpf, cedille_ebpf::maps::REDIRECT_TARGETS)?;
        let orig = take_map(&mut ebpf, cedille_ebpf::maps::ORIGINAL_DST)?;
        let stats = take_map(&mut ebpf, cedille_ebpf::maps::STATS)?;
        let inbound = take_map(&mut ebpf, cedille_ebpf::maps::INBOUND_ADDRS)?;
        let inbound_socks = take_map(&mut ebpf, cedille_ebpf::maps::INBOUND_SOCKETS)?;
        let config = take_map(&mut ebpf, cedille_ebpf::maps::CONFIG)?;
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            links: StdHashMap::new(),
            targets,
            orig: Mutex::new(orig),
            stats,
            inbound,
            inbound_socks,
            inbound_slots: Default::default(),
            config,
        })
    }

    fn link_dir(&self, id: &str) -> Result<PathBuf> {
        if !valid_id(id) {
            return Err(DatapathError::BadId(id.to_owned()));
        }
        Ok(self.pin_dir.join("links").join(id))
    }

    /// Attaches the programs to the cgroup at `cgroup` under the name `id`, or adopts the
    /// links an earlier run pinned under that name.
    pub fn attach(&mut self, id: &str, cgroup: &Path) -> Result<Attached> {
        let dir = self.link_dir(id)?;
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let cgroup_dir = fs::File::open(cgroup).map_err(io_err(cgroup))?;
        let mut links = Vec::with_capacity(PROGRAMS.len());
        let mut created = false;
        for (name, file) in PROGRAMS {
            let pin = dir.join(file);
            if pin.exists() {
                match PinnedLink::from_pin(&pin) {
                    Ok(link) => {
                        links.push(link);
                        continue;
                    }
                    Err(e) => {
                        warn!(pin = %pin.display(), error = %e, "replacing unreadable pinned link");
                        fs::remove_file(&pin).map_err(io_err(&pin))?;
                    }
                }
            }
            let link = self.attach_program(name, cgroup_dir.as_fd())?;
            let pinned = link.pin(&pin).map_err(|source| DatapathError::Pin {
                path: pin.clone(),
                source,
            })?;
            links.push(pinned);
            created = true;
        }
        self.links.insert(id.to_owned(), links);
        let outcome = if created {
            Attached::Created
        } else {
            Attached::Adopted
        };
        info!(id, cgroup = %cgroup.display(), ?outcome, "eBPF programs attached");
        Ok(outcome)
    }

    fn attach_program(&mut self, name: &'static str, cgroup: impl AsFd) -> Result<FdLink> {
        let err = |source| DatapathError::Program { name, source };
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(err(ProgramError::UnexpectedProgramType))?;
        // Links are always attached in multi mode, so other agents' programs keep working.
        let link: FdLink = match program {
            aya::programs::Program::CgroupSockAddr(p) => {
                let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(err)?;
                let link = p.take_link(id).map_err(err)?;
                link.try_into()
                    .map_err(|source| DatapathError::Link { name, source })?
            }
            aya::programs::Program::SockOps(p) => {
                let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(err)?;
                let link = p.take_link(id).map_err(err)?;
                link.try_into()
                    .map_err(|source| DatapathError::Link { name, source })?
            }
            _ => return Err(err(ProgramError::UnexpectedProgramType)),
        };
        Ok(link)
    }

    /// Detaches the programs attached under `id` and removes their pins. Returns whether
    /// anything was attached.
    pub fn detach(&mut self, id: &str) -> Result<bool> {
        let dir = self.link_dir(id)?;
        let mut found = false;
        if let Some(links) = self.links.remove(id) {
            for link in links {
                found = true;
                // Unpinning and dropping the last reference detaches the program.
                if let Err(e) = link.unpin() {
                    warn!(id, error = %e, "unpinning link");
                }
            }
        }
        for (_, file) in PROGRAMS.iter().chain([&SK_LOOKUP]) {
            let pin = dir.join(file);
            if pin.exists() {
                found = true;
                fs::remove_file(&pin).map_err(io_err(&pin))?;
            }
        }
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        if found {
            info!(id, "eBPF programs detached");
        }
        Ok(found)
    }

    /// Attachment ids pinned under this directory, by this run or an earlier one.
    pub fn pinned_ids(&self) -> Result<Vec<String>> {
        let dir = self.pin_dir.join("links");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            ids.push(entry.file_name().to_string_lossy().into_owned());
        }
        ids.sort();
        Ok(ids)
    }

    /// Sends TCP connections made in the network namespace `netns_cookie` (by processes in an
    /// attached cgroup) to `target`.
    pub fn set_target(&mut self, netns_cookie: u64, target: SocketTarget) -> Result<()> {
        self.targets
            .insert(netns_cookie, target.to_map(), 0)
            .map_err(|source| DatapathError::Map {
                name: cedille_ebpf::maps::REDIRECT_TARGETS,
                source,
            })
    }

    /// Stops redirecting the network namespace `netns_cookie`. Returns whether it was.
    pub fn remove_target(&mut self, netns_cookie: u64) -> Result<bool> {
        match self.targets.remove(&netns_cookie) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(source) => Err(DatapathError::Map {
                name: cedille_ebpf::maps::REDIRECT_TARGETS,
                source,
            }),
        }
    }

    /// Number of network namespaces with a redirect target.
    pub fn target_count(&self) -> usize {
        self.targets.keys().filter(|k| k.is_ok()).count()
    }

    /// Number of recorded original destinations not yet taken by the agent.
    pub fn pending_original_dsts(&self) -> usize {
        let orig = self.orig.lock().unwrap_or_else(|e| e.into_inner());
        orig.keys().filter(|k| k.is_ok()).count()
    }

    /// The destination the client of `accepted` asked for before the redirect, removed from
    /// the map as it is read. `None` when the connection was not redirected by us.
    pub fn take_original_dst(&self, accepted: &impl AsFd) -> Result<Option<SocketAddr>> {
        let fd = accepted.as_fd();
        let peer = netns::peer_addr(fd).map_err(|source| DatapathError::Io {
            path: PathBuf::from("<accepted socket>"),
            source,
        })?;
        let cookie = netns::netns_cookie(fd).map_err(|source| DatapathError::Io {
            path: PathBuf::from("<accepted socket>"),
            source,
        })?;
        let key = sock_key(cookie, peer);
        let mut orig = self.orig.lock().unwrap_or_else(|e| e.into_inner());
        let value = match orig.get(&key, 0) {
            Ok(v) => v,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(source) => {
                return Err(DatapathError::Map {
                    name: cedille_ebpf::maps::ORIGINAL_DST,
                    source,
                });
            }
        };
        // A concurrent removal (LRU eviction) is harmless: we already hold the value.
        let _ = orig.remove(&key);
        Ok(Some(orig_to_addr(&value)))
    }

    /// Attaches the inbound program to the network namespace `netns` under the attachment
    /// `id` (next to its cgroup programs), or adopts the link an earlier run pinned.
    pub fn attach_netns(&mut self, id: &str, netns: &fs::File) -> Result<Attached> {
        let dir = self.link_dir(id)?;
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let pin = dir.join(SK_LOOKUP.1);
        if pin.exists() {
            match PinnedLink::from_pin(&pin) {
                Ok(link) => {
                    self.links.entry(id.to_owned()).or_default().push(link);
                    return Ok(Attached::Adopted);
                }
                Err(e) => {
                    warn!(pin = %pin.display(), error = %e, "replacing unreadable pinned link");
                    fs::remove_file(&pin).map_err(io_err(&pin))?;
                }
            }
        }
        let name = SK_LOOKUP.0;
        let err = |source| DatapathError::Program { name, source };
        let aya::programs::Program::SkLookup(p) = self
            .ebpf
            .program_mut(name)
            .ok_or(err(ProgramError::UnexpectedProgramType))?
        else {
            return Err(err(ProgramError::UnexpectedProgramType));
        };
        let link_id = p.attach(netns.as_fd()).map_err(err)?;
        let link: FdLink = p.take_link(link_id).map_err(err)?.into();
        let pinned = link.pin(&pin).map_err(|source| DatapathError::Pin {
            path: pin.clone(),
            source,
        })?;
        self.links.entry(id.to_owned()).or_default().push(pinned);
        info!(id, "inbound eBPF program attached");
        Ok(Attached::Created)
    }

    /// Hands connections arriving for any of `addrs` to `listener` (through `slot`).
    pub fn set_inbound(
        &mut self,
        slot: u32,
        listener: &impl std::os::fd::AsRawFd,
        addrs: &[IpAddr],
    ) -> Result<()> {
        let map_err = |name| move |source| DatapathError::Map { name, source };
        self.inbound_socks
            .set(slot, listener, 0)
            .map_err(map_err(cedille_ebpf::maps::INBOUND_SOCKETS))?;
        self.inbound_slots.insert(slot);
        for addr in addrs {
            self.inbound
                .insert(pod_addr(*addr), slot, 0)
                .map_err(map_err(cedille_ebpf::maps::INBOUND_ADDRS))?;
        }
        Ok(())
    }

    /// Undoes [`Self::set_inbound`]; missing entries are not an error.
    pub fn remove_inbound(&mut self, slot: u32, addrs: &[IpAddr]) -> Result<()> {
        for addr in addrs {
            match self.inbound.remove(&pod_addr(*addr)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(DatapathError::Map {
                        name: cedille_ebpf::maps::INBOUND_ADDRS,
                        source,
                    });
                }
            }
        }
        self.inbound_slots.remove(&slot);
        match self.inbound_socks.clear_index(&slot) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            // An empty slot (the socket closed already) reads as "no such entry".
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(source) => Err(DatapathError::Map {
                name: cedille_ebpf::maps::INBOUND_SOCKETS,
                source,
            }),
        }
    }

    /// Removes every entry left for pod addresses not in `keep` (a previous run's pods).
    pub fn retain_inbound(&mut self, keep: &[IpAddr]) -> Result<usize> {
        let keep: Vec<PodAddr> = keep.iter().map(|a| pod_addr(*a)).collect();
        let stale: Vec<PodAddr> = self
            .inbound
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !keep.contains(k))
            .collect();
        for k in &stale {
            let _ = self.inbound.remove(k);
        }
        Ok(stale.len())
    }

    /// Removes the redirect targets of network namespaces not in `keep`.
    pub fn retain_targets(&mut self, keep: &[u64]) -> usize {
        let stale: Vec<u64> = self
            .targets
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !keep.contains(k))
            .collect();
        for k in &stale {
            let _ = self.targets.remove(k);
        }
        stale.len()
    }

    /// Forgets recorded original destinations of connections made in `netns_cookie` (an
    /// un-enrolled pod's connections that the agent never accepted).
    pub fn purge_netns(&mut self, netns_cookie: u64) -> usize {
        let mut orig = self.orig.lock().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<SockKey> = orig
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.netns_cookie == netns_cookie)
            .collect();
        for k in &stale {
            let _ = orig.remove(k);
        }
        stale.len()
    }

    /// Chooses what enrolled pods' connections do while the agent is down.
    pub fn set_fail_open(&mut self, open: bool) -> Result<()> {
        let flags = if open { CONFIG_FAIL_OPEN } else { 0 };
        self.config
            .set(0, flags, 0)
            .map_err(|source| DatapathError::Map {
                name: cedille_ebpf::maps::CONFIG,
                source,
            })
    }

    /// Inbound slots in use.
    pub fn inbound_slots(&self) -> std::collections::BTreeSet<u32> {
        self.inbound_slots.clone()
    }

    pub fn map_counts(&self) -> MapCounts {
        let orig = self.orig.lock().unwrap_or_else(|e| e.into_inner());
        MapCounts {
            targets: self.targets.keys().filter(|k| k.is_ok()).count(),
            original_dsts: orig.keys().filter(|k| k.is_ok()).count(),
            inbound_addrs: self.inbound.keys().filter(|k| k.is_ok()).count(),
            inbound_sockets: self.inbound_slots.len(),
        }
    }

    /// Kernel run time and run count of each program (`kernel.bpf_stats_enabled` must be 1
    /// for them to move).
    pub fn program_stats(&self) -> Vec<(&'static str, u64, u64)> {
        let mut out = Vec::new();
        for (name, _) in PROGRAMS.iter().chain([&SK_LOOKUP]) {
            let Some(p) = self.ebpf.program(name) else {
                continue;
            };
            let info = match p {
                aya::programs::Program::CgroupSockAddr(p) => p.info(),
                aya::programs::Program::SockOps(p) => p.info(),
                aya::programs::Program::SkLookup(p) => p.info(),
                _ => continue,
            };
            if let Ok(info) = info {
                out.push((*name, info.run_time().as_nanos() as u64, info.run_count()));
            }
        }
        out
    }

    pub fn stats(&self) -> Result<Stats> {
        let read = |stat: Stat| -> Result<u64> {
            let per_cpu =
                self.stats
                    .get(&(stat as u32), 0)
                    .map_err(|source| DatapathError::Map {
                        name: cedille_ebpf::maps::STATS,
                        source,
                    })?;
            Ok(per_cpu.iter().sum())
        };
        debug_assert_eq!(STAT_COUNT, 7);
        Ok(Stats {
            redirected: read(Stat::Redirected)?,
            recorded: read(Stat::Recorded)?,
            map_update_failed: read(Stat::MapUpdateFailed)?,
            inbound_redirected: read(Stat::InboundRedirected)?,
            inbound_refused: read(Stat::InboundRefused)?,
            failed_open: read(Stat::FailedOpen)?,
            note_lost: read(Stat::NoteLost)?,
        })
    }
}

/// Attachment ids become directory names under the pin directory: no separators, no dot
/// files, bounded length.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::Map {
        name,
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    })?;
    T::try_from(map).map_err(|source| DatapathError::Map { name, source })
}

/// Makes sure `pin_dir` is (or will be, once created) on a bpffs: its deepest existing
/// ancestor must be on one. When that ancestor is `/sys/fs/bpf` itself and holds no bpffs (an
/// agent started under `ip netns exec`, which remounts /sys), mounts one there.
fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let nearest = nearest_existing(pin_dir)?;
    let fs_type = statfs(&nearest)
        .map_err(|e| io_err(&nearest)(e.into()))?
        .filesystem_type();
    if fs_type == BPF_FS_MAGIC {
        return Ok(());
    }
    let mut mount_error = None;
    if nearest == Path::new(BPFFS_ROOT) {
        match mount(
            Some("bpf"),
            BPFFS_ROOT,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        ) {
            Ok(()) => {
                info!(
                    path = BPFFS_ROOT,
                    previous = fs_name(fs_type),
                    "no bpffs was mounted at {BPFFS_ROOT}; mounted one"
                );
                return Ok(());
            }
            Err(e) => mount_error = Some(e.into()),
        }
    }
    Err(DatapathError::NotBpffs {
        path: pin_dir.to_owned(),
        nearest,
        filesystem: fs_name(fs_type),
        mount_error,
    })
}

/// `path` or its deepest ancestor that exists.
fn nearest_existing(path: &Path) -> Result<PathBuf> {
    for dir in path.ancestors() {
        // The last ancestor of a relative path is "".
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        match fs::metadata(dir) {
            Ok(_) => return Ok(dir.to_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(dir)(e)),
        }
    }
    // Unreachable in practice: "/" and "." exist.
    Err(io_err(path)(io::ErrorKind::NotFound.into()))
}

/// A readable name for a filesystem type, for error messages.
fn fs_name(fs_type: FsType) -> String {
    const NAMES: &[(FsType, &str)] = &[
        (BPF_FS_MAGIC, "bpf"),
        (SYSFS_MAGIC, "sysfs"),
        (TMPFS_MAGIC, "tmpfs"),
        (OVERLAYFS_SUPER_MAGIC, "overlay"),
        (EXT4_SUPER_MAGIC, "ext2/ext3/ext4"),
        (XFS_SUPER_MAGIC, "xfs"),
        (BTRFS_SUPER_MAGIC, "btrfs"),
        (PROC_SUPER_MAGIC, "proc"),
        (CGROUP2_SUPER_MAGIC, "cgroup2"),
        (CGROUP_SUPER_MAGIC, "cgroup"),
        (DEBUGFS_MAGIC, "debugfs"),
        (TRACEFS_MAGIC, "tracefs"),
        (SECURITYFS_MAGIC, "securityfs"),
        (NFS_SUPER_MAGIC, "nfs"),
        (FUSE_SUPER_MAGIC, "fuse"),
        (F2FS_SUPER_MAGIC, "f2fs"),
    ];
    match NAMES.iter().find(|(t, _)| *t == fs_type) {
        Some((_, name)) => (*name).to_owned(),
        None => format!("a filesystem of type {:#x}", fs_type.0),
    }
}

/// Where the agent listens for redirected connections inside a pod's network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketTarget {
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub port: u16,
}

impl SocketTarget {
    /// The usual target: the agent's outbound listener on the pod's loopback.
    pub fn loopback(port: u16) -> Self {
        Self {
            ip4: Ipv4Addr::LOCALHOST,
            ip6: Ipv6Addr::LOCALHOST,
            port,
        }
    }

    fn to_map(self) -> RedirectTarget {
        RedirectTarget {
            ip6: words(self.ip6.octets()),
            ip4: u32::from_ne_bytes(self.ip4.octets()),
            port: self.port,
            _pad: 0,
        }
    }
}

/// Packs address bytes into the native-endian words the kernel contexts use.
fn words(octets: [u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (i, chunk) in octets.chunks_exact(4).enumerate() {
        out[i] = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    out
}

fn octets(words: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    out
}

/// The map key for a connection whose client end is `peer`, as sock_ops recorded it.
pub fn sock_key(netns_cookie: u64, peer: SocketAddr) -> SockKey {
    let (addr, family) = match peer.ip().to_canonical() {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(v6) => (words(v6.octets()), AF_INET6),
    };
    SockKey {
        netns_cookie,
        addr,
        port: peer.port(),
        family,
        _pad: 0,
    }
}

fn pod_addr(addr: IpAddr) -> PodAddr {
    match addr.to_canonical() {
        IpAddr::V4(v4) => PodAddr {
            addr: [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
            family: u32::from(AF_INET),
        },
        IpAddr::V6(v6) => PodAddr {
            addr: words(v6.octets()),
            family: u32::from(AF_INET6),
        },
    }
}

fn orig_to_addr(orig: &OrigDst) -> SocketAddr {
    if orig.family == AF_INET {
        let b = orig.addr[0].to_ne_bytes();
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(b)), orig.port)
    } else {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets(&orig.addr))), orig.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_map_layout() {
        for addr in ["10.1.2.3:80", "[fd00::1:2]:8443", "[::ffff:10.0.0.9]:53"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let key = sock_key(7, addr);
            let orig = OrigDst {
                addr: key.addr,
                port: key.port,
                family: key.family,
            };
            let back = orig_to_addr(&orig);
            assert_eq!(back.ip(), addr.ip().to_canonical());
            assert_eq!(back.port(), addr.port());
        }
    }

    #[test]
    fn map_words_hold_address_bytes_in_network_order() {
        let t = SocketTarget {
            ip4: Ipv4Addr::new(127, 0, 0, 1),
            ip6: Ipv6Addr::LOCALHOST,
            port: 15001,
        }
        .to_map();
        // The kernel compares these words with the raw bytes of sockaddr_in{,6}.
        assert_eq!(t.ip4.to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!(t.ip6[3].to_ne_bytes(), [0, 0, 0, 1]);
        assert_eq!(t.port, 15001);
    }

    #[test]
    fn v4_mapped_peer_uses_the_v4_key() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:4000".parse().unwrap();
        let plain: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(sock_key(1, mapped), sock_key(1, plain));
    }

    #[test]
    fn pin_dir_off_bpffs_is_refused_before_anything_is_created() {
        let tmp = tempfile::Builder::new()
            .prefix("cedille-pins")
            .tempdir_in("/tmp")
            .unwrap();
        let pin_dir = tmp.path().join("cedille").join("pins");
        // Any non-empty object gets past the embedded-object check; the bpffs check comes
        // before it is parsed.
        let Err(err) = Datapath::load_object(b"not an ELF", &pin_dir) else {
            panic!("loaded a datapath pinned under {}", pin_dir.display());
        };
        let message = err.to_string();
        let DatapathError::NotBpffs {
            path,
            nearest,
            filesystem,
            mount_error,
        } = err
        else {
            panic!("expected NotBpffs, got: {message}");
        };
        assert_eq!(path, pin_dir);
        assert_eq!(nearest, tmp.path());
        assert!(mount_error.is_none(), "{message}");
        assert!(
            !tmp.path().join("cedille").exists(),
            "created the pin directory"
        );
        for part in [
            pin_dir.to_str().unwrap(),
            "not on a bpffs mount",
            tmp.path().to_str().unwrap(),
            &filesystem,
            "mount -t bpf bpf /sys/fs/bpf",
        ] {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
        assert!(!message.contains("No such file"), "{message}");
    }

    #[test]
    fn nearest_existing_directory_of_a_missing_path() {
        assert_eq!(
            nearest_existing(Path::new("/nonexistent-cedille/a/b")).unwrap(),
            Path::new("/")
        );
        assert_eq!(
            nearest_existing(Path::new("nonexistent-cedille/a")).unwrap(),
            Path::new(".")
        );
        assert_eq!(
            nearest_existing(Path::new("/tmp")).unwrap(),
            Path::new("/tmp")
        );
        assert_eq!(fs_name(SYSFS_MAGIC), "sysfs");
        assert_eq!(fs_name(FsType(0x1234)), "a filesystem of type 0x1234");
    }

    #[test]
    fn attachment_ids_cannot_escape_the_pin_directory() {
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad:?} accepted");
        }
        for good in ["pod-1234", "0f3c_uid.v2", &"x".repeat(128)] {
            assert!(valid_id(good), "{good:?} refused");
        }
    }
}
