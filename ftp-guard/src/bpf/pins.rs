//! Pinning: the pin directory's hygiene (on a bpffs, owned by us, writable by nobody
//! else), the layout marker that versions what is pinned, refusing pinned maps this build
//! cannot use, and removing every pin (`ftp-guard unpin`).
use std::path::Path;

use aya::maps::{MapInfo, MapType};
use ftp_guard_common::{
    AclKeyData, AclValue, BanValue, FilterConfig, FlowKey, FlowValue, LeaseKey, LeaseValue,
    MAX_ACL_RULES, MAX_BANS, MAX_SYN_SOURCES, PIN_LAYOUT_VERSION, SynBucket, SynKey, names,
};

use super::{BpfError, MapSizes};

pub(super) fn pin_error(path: &Path, e: impl std::fmt::Display) -> BpfError {
    BpfError::Pin {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Maps that outlive the process when pinning is on (everything the programs use).
pub(super) const PINNED_MAPS: [&str; 10] = [
    names::FILTER_CONFIG,
    names::LEASES,
    names::LOCAL_V6,
    names::FLOWS,
    names::TX_PORTS,
    names::COUNTERS,
    names::ACL,
    names::ACL_HITS,
    names::BANS,
    names::SYN_BUCKETS,
];

/// BPF_FS_MAGIC from linux/magic.h: pins only work on a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Checks that `dir` is (or can be created, mode 0700) on a bpffs mount, owned by root or
/// this process's user and writable by nobody else: whoever can write there can replace a
/// pinned map or link with their own, which the next start adopts.
pub(super) fn prepare_pin_dir(dir: &Path) -> Result<(), BpfError> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| pin_error(dir, e))?;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| pin_error(dir, e))?;
    // SAFETY: a valid path and an out-parameter of the right type.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
        return Err(pin_error(dir, std::io::Error::last_os_error()));
    }
    if fs.f_type as i64 != BPF_FS_MAGIC {
        return Err(pin_error(
            dir,
            "not on a bpffs (mount one: `mount -t bpf -o mode=0700 bpf /sys/fs/bpf`; note that `ip netns exec` hides the host's /sys/fs/bpf)",
        ));
    }
    let meta = std::fs::metadata(dir).map_err(|e| pin_error(dir, e))?;
    // SAFETY: a call without preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(pin_error(
            dir,
            format!(
                "owned by uid {}, not by root or this process (uid {me}): refusing to adopt what another user could have pinned",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(pin_error(
            dir,
            format!(
                "mode {:o} is writable by group or others, who could replace the pinned maps and links: `chmod go-w` it (or choose another pin_path)",
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// What each pinned map must be for this build to adopt it: (name, type, key size,
/// value size, max entries).
fn pinned_map_specs(sizes: MapSizes) -> [(&'static str, MapType, u32, u32, u32); 10] {
    use core::mem::size_of;
    let size = |n: usize| n as u32;
    [
        (
            names::FILTER_CONFIG,
            MapType::Array,
            4,
            size(size_of::<FilterConfig>()),
            1,
        ),
        (
            names::LEASES,
            MapType::Hash,
            size(size_of::<LeaseKey>()),
            size(size_of::<LeaseValue>()),
            sizes.max_leases,
        ),
        (names::LOCAL_V6, MapType::Hash, 16, 4, 256),
        (
            names::FLOWS,
            MapType::Hash,
            size(size_of::<FlowKey>()),
            size(size_of::<FlowValue>()),
            sizes.max_flows,
        ),
        // Value: struct bpf_devmap_val (ifindex, program).
        (names::TX_PORTS, MapType::DevMapHash, 4, 8, 64),
        (
            names::COUNTERS,
            MapType::PerCpuArray,
            4,
            8,
            ftp_guard_common::COUNTER_COUNT,
        ),
        (
            names::ACL,
            MapType::LpmTrie,
            size(4 + size_of::<AclKeyData>()),
            size(size_of::<AclValue>()),
            MAX_ACL_RULES,
        ),
        (names::ACL_HITS, MapType::PerCpuArray, 4, 8, MAX_ACL_RULES),
        (
            names::BANS,
            MapType::Hash,
            16,
            size(size_of::<BanValue>()),
            MAX_BANS,
        ),
        (
            names::SYN_BUCKETS,
            MapType::LruHash,
            size(size_of::<SynKey>()),
            size(size_of::<SynBucket>()),
            MAX_SYN_SOURCES,
        ),
    ]
}

/// The empty directory in the pin directory that records [`PIN_LAYOUT_VERSION`] (bpffs
/// holds only pins and directories).
pub(super) fn layout_marker(version: u32) -> String {
    format!("layout-v{version}")
}

/// The remedy every pin mismatch names.
const UNPIN_ADVICE: &str = "it was pinned by an incompatible ftp-guard: run `ftp-guard unpin` (ends the data connections it carries) and start again";

/// Refuses pinned maps under `dir` that this build cannot use as they are: another map
/// type, key or value size, capacity, or layout version (aya would adopt any map pinned
/// under the right name).
pub(super) fn check_pinned_maps(dir: &Path, sizes: MapSizes) -> Result<(), BpfError> {
    let specs = pinned_map_specs(sizes);
    if !specs.iter().any(|(name, ..)| dir.join(name).exists()) {
        return Ok(());
    }
    let marker = layout_marker(PIN_LAYOUT_VERSION);
    if !dir.join(&marker).is_dir() {
        let found = std::fs::read_dir(dir)
            .map_err(|e| pin_error(dir, e))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .find(|n| n.starts_with("layout-v"));
        let found = found.map_or_else(
            || "none (an older ftp-guard)".to_owned(),
            |n| n[8..].to_owned(),
        );
        return Err(pin_error(
            dir,
            format!(
                "pinned maps of layout version {found}, this ftp-guard needs {PIN_LAYOUT_VERSION}: {UNPIN_ADVICE}"
            ),
        ));
    }
    for (name, map_type, key_size, value_size, max_entries) in specs {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|e| pin_error(&path, e))?;
        let found_type = info.map_type().map_err(|e| pin_error(&path, e))?;
        let mismatch = if found_type != map_type {
            Some(format!(
                "is a {found_type:?} map, this ftp-guard needs {map_type:?}"
            ))
        } else if info.key_size() != key_size {
            Some(format!(
                "has key size {}, this ftp-guard needs {key_size}",
                info.key_size()
            ))
        } else if info.value_size() != value_size {
            Some(format!(
                "has value size {}, this ftp-guard needs {value_size}",
                info.value_size()
            ))
        } else if info.max_entries() != max_entries {
            Some(format!(
                "has {} entries, this ftp-guard needs {max_entries} (max_leases changed?)",
                info.max_entries()
            ))
        } else {
            None
        };
        if let Some(mismatch) = mismatch {
            return Err(pin_error(
                &path,
                format!("map {name} {mismatch}: {UNPIN_ADVICE}"),
            ));
        }
    }
    Ok(())
}

/// Removes everything ftp-guard pinned under `dir`: its programs detach once nothing else
/// holds them, its maps are freed.
pub fn unpin(dir: &Path) -> Result<usize, BpfError> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(pin_error(dir, e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            // The layout marker.
            std::fs::remove_dir(&path).map_err(|e| pin_error(&path, e))?;
            continue;
        }
        std::fs::remove_file(&path).map_err(|e| pin_error(&path, e))?;
        removed += 1;
    }
    let _ = std::fs::remove_dir(dir);
    Ok(removed)
}
