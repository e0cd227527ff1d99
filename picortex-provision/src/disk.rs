//! Per-chat disk space (SPEC P7): chat homes live on a filesystem of their own, apart from the
//! gateway's database and result files, and every home is a btrfs subvolume whose quota group
//! carries a size limit. A chat that fills its home gets EDQUOT on its own writes; other chats,
//! the database and the turn result files are on space it cannot reach. The limit is the
//! operator's, from `[sandbox]` in `/etc/picortex/picortexd.toml`, read here as root:
//!
//! ```toml
//! [sandbox]
//! disk_quota = "2G"      # per chat home: bytes, or K/M/G/T (powers of 1024); at least 1M
//! ```
//!
//! Why btrfs quota groups rather than user quotas (`quotactl`): kernels built without
//! `CONFIG_QFMT_V2` (as some are) cannot mount ext4 with quotas at all, and XFS quotas are a
//! build option too, while quota groups are part of every btrfs. They count metadata as well
//! as data, so inodes need no limit of their own. A subvolume is also a unit the helper creates
//! and limits through the parent's file descriptor alone. Limits: a turn must not be able to
//! create subvolumes or snapshots of its own (their space would escape the home's group);
//! picortex-run refuses btrfs ioctls to the agent for that.
//!
//! Without quotas on the chats filesystem the helper refuses to provision: a chat without a
//! limit could fill it for everyone.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::{fstat, Mode};
use serde::Deserialize;

use crate::egress::CONFIG_PATH;

/// Where the gateway's database and result files are: the chats filesystem must not be theirs.
const GATEWAY_STATE: &str = "/var/lib/picortex";
#[cfg(test)]
use crate::egress::parse_size;

/// The root directory of every btrfs subvolume has this inode number.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
const BTRFS_IOCTL_MAGIC: u32 = 0x94;
const BTRFS_PATH_NAME_MAX: usize = 4087;
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1 << 0;
const BTRFS_QGROUP_LIMIT_MAX_EXCL: u64 = 1 << 1;

/// `struct btrfs_ioctl_vol_args` of linux/btrfs.h.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

/// `struct btrfs_qgroup_limit` of linux/btrfs.h.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QgroupLimit {
    pub flags: u64,
    pub max_rfer: u64,
    pub max_excl: u64,
    pub rsv_rfer: u64,
    pub rsv_excl: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args` of linux/btrfs.h.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct QgroupLimitArgs {
    /// 0: the quota group of the subvolume the descriptor is in.
    qgroupid: u64,
    lim: QgroupLimit,
}

/// `struct btrfs_ioctl_fs_info_args` of linux/btrfs.h: the fields used here, then the rest.
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    rest: [u8; 1024 - 32],
}

/// The kernel's `_IOC(dir, type, nr, size)`.
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (BTRFS_IOCTL_MAGIC << 8) | nr
}
/// `_IOW(BTRFS_IOCTL_MAGIC, 14, struct btrfs_ioctl_vol_args)`
const BTRFS_IOC_SUBVOL_CREATE: u32 = ioc(1, 14, std::mem::size_of::<VolArgs>());
/// `_IOR(BTRFS_IOCTL_MAGIC, 31, struct btrfs_ioctl_fs_info_args)`
const BTRFS_IOC_FS_INFO: u32 = ioc(2, 31, std::mem::size_of::<FsInfoArgs>());
/// `_IOR(BTRFS_IOCTL_MAGIC, 43, struct btrfs_ioctl_qgroup_limit_args)` (sic: _IOR upstream)
const BTRFS_IOC_QGROUP_LIMIT: u32 = ioc(2, 43, std::mem::size_of::<QgroupLimitArgs>());

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{CONFIG_PATH}: {0}")]
    Config(String),
    #[error("{path} is on {fs}, not on a btrfs with quotas: chat homes need a filesystem of their own with per-home limits. Start var-lib-picortex-chats.mount (systemctl start var-lib-picortex-chats.mount, see README \"Disk space\") or mount your own btrfs there with quotas on")]
    NotBtrfs { path: String, fs: String },
    #[error("{path} is on the same filesystem as {GATEWAY_STATE}: a chat filling its home would fill the gateway's database too. Mount a filesystem of its own there (var-lib-picortex-chats.mount, see README \"Disk space\")")]
    SharedWithGateway { path: String },
    #[error("{path} has btrfs quotas off, so chat homes cannot be limited: run `btrfs quota enable {path}`")]
    QuotasOff { path: String },
    #[error("{path} is a plain directory, not a subvolume of its own, so it cannot be given a quota: archive the chat (ArchiveChat) and its next message restores it into a subvolume")]
    NotSubvolume { path: String },
    #[error("{what} {path}: {source}")]
    Sys {
        what: &'static str,
        path: String,
        source: nix::Error,
    },
}

fn sys(what: &'static str, path: &str) -> impl FnOnce(nix::Error) -> DiskError {
    let path = path.to_owned();
    move |source| DiskError::Sys { what, path, source }
}

/// A chat home's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskQuota {
    pub bytes: u64,
}

impl DiskQuota {
    /// What the kernel is asked: referenced and exclusive bytes of the home's group both capped
    /// (they are the same while nobody snapshots the home).
    pub fn limit(&self) -> QgroupLimit {
        QgroupLimit {
            flags: BTRFS_QGROUP_LIMIT_MAX_RFER | BTRFS_QGROUP_LIMIT_MAX_EXCL,
            max_rfer: self.bytes,
            max_excl: self.bytes,
            ..QgroupLimit::default()
        }
    }
}

impl std::fmt::Display for DiskQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", human(self.bytes))
    }
}

/// `bytes` in the largest unit that divides it exactly.
fn human(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[derive(Debug, Deserialize, Default)]
struct File {
    #[serde(default)]
    sandbox: crate::egress::Sandbox,
}

pub fn parse(text: &str) -> Result<DiskQuota, DiskError> {
    let f: File = toml::from_str(text)
        .map_err(|e| DiskError::Config(crate::egress::toml_error(CONFIG_PATH, text, &e)))?;
    let bytes = crate::egress::disk_quota(&f.sandbox)
        .map_err(|e| DiskError::Config(crate::egress::key_error(CONFIG_PATH, text, &e)))?;
    Ok(DiskQuota { bytes })
}

/// Refuse a chats directory that cannot keep chats apart: not btrfs, the gateway's own
/// filesystem, or quotas off. `chats` is the directory opened by the caller without following
/// links.
pub fn check_chats_fs(chats: &OwnedFd, path: &str) -> Result<(), DiskError> {
    let fs = nix::sys::statfs::fstatfs(chats).map_err(sys("statfs", path))?;
    if fs.filesystem_type() != nix::sys::statfs::BTRFS_SUPER_MAGIC {
        return Err(DiskError::NotBtrfs {
            path: path.to_owned(),
            fs: format!("a filesystem of type {:#x}", fs.filesystem_type().0),
        });
    }
    if same_filesystem_as_gateway(chats, path)? {
        return Err(DiskError::SharedWithGateway {
            path: path.to_owned(),
        });
    }
    // Asking for no change answers whether quotas are on (ENOTCONN when they are off).
    match qgroup_limit(chats, &QgroupLimit::default()) {
        Ok(()) => Ok(()),
        Err(nix::Error::ENOTCONN) => Err(DiskError::QuotasOff {
            path: path.to_owned(),
        }),
        Err(e) => Err(sys("BTRFS_IOC_QGROUP_LIMIT", path)(e)),
    }
}

/// Whether the chats directory shares its space with the gateway's state. On btrfs the statfs
/// filesystem id differs between subvolumes of one filesystem, so two btrfs are compared by
/// their filesystem UUIDs instead.
fn same_filesystem_as_gateway(chats: &OwnedFd, path: &str) -> Result<bool, DiskError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let gateway = open(GATEWAY_STATE, flags, Mode::empty()).map_err(sys("open", GATEWAY_STATE))?;
    let gw_fs = nix::sys::statfs::fstatfs(&gateway).map_err(sys("statfs", GATEWAY_STATE))?;
    if gw_fs.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC {
        return Ok(btrfs_fsid(chats).map_err(sys("BTRFS_IOC_FS_INFO", path))?
            == btrfs_fsid(&gateway).map_err(sys("BTRFS_IOC_FS_INFO", GATEWAY_STATE))?);
    }
    let ours = nix::sys::statvfs::fstatvfs(chats).map_err(sys("statvfs", path))?;
    let theirs = nix::sys::statvfs::fstatvfs(&gateway).map_err(sys("statvfs", GATEWAY_STATE))?;
    Ok(ours.filesystem_id() == theirs.filesystem_id())
}

/// The UUID of the btrfs `dir` is on.
fn btrfs_fsid(dir: &OwnedFd) -> Result<[u8; 16], nix::Error> {
    let mut args = FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        rest: [0; 1024 - 32],
    };
    // SAFETY: BTRFS_IOC_FS_INFO writes one `struct btrfs_ioctl_fs_info_args` (1024 bytes, the
    // size of FsInfoArgs, which the request number encodes) through the pointer, which is valid
    // and exclusively ours for the duration of the call; the fd stays open.
    let r = unsafe {
        libc::ioctl(
            dir.as_fd().as_raw_fd(),
            BTRFS_IOC_FS_INFO as _,
            &mut args as *mut FsInfoArgs,
        )
    };
    nix::Error::result(r).map(|_| args.fsid)
}

/// Create subvolume `name` in `parent` (EEXIST when there is anything by that name).
pub fn create_subvolume(parent: &OwnedFd, name: &str) -> Result<(), nix::Error> {
    let mut args = VolArgs {
        fd: 0,
        name: [0; BTRFS_PATH_NAME_MAX + 1],
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > BTRFS_PATH_NAME_MAX || bytes.contains(&b'/') {
        return Err(nix::Error::EINVAL);
    }
    args.name
        .get_mut(..bytes.len())
        .ok_or(nix::Error::EINVAL)?
        .copy_from_slice(bytes);
    // SAFETY: BTRFS_IOC_SUBVOL_CREATE reads one `struct btrfs_ioctl_vol_args` (VolArgs has its
    // layout and size, which the request number encodes) through the pointer, which is valid
    // and NUL-terminated for the duration of the call; the fd is borrowed and stays open.
    let r = unsafe {
        libc::ioctl(
            parent.as_fd().as_raw_fd(),
            BTRFS_IOC_SUBVOL_CREATE as _,
            &args as *const VolArgs,
        )
    };
    nix::Error::result(r).map(drop)
}

/// Whether `dir` (on btrfs) is the root of a subvolume of its own.
pub fn is_subvolume(dir: &OwnedFd) -> Result<bool, nix::Error> {
    Ok(fstat(dir)?.st_ino == BTRFS_FIRST_FREE_OBJECTID)
}

/// Set the limit of the quota group of the subvolume `dir` is in.
fn qgroup_limit(dir: &OwnedFd, lim: &QgroupLimit) -> Result<(), nix::Error> {
    let mut args = QgroupLimitArgs {
        qgroupid: 0,
        lim: *lim,
    };
    // SAFETY: BTRFS_IOC_QGROUP_LIMIT reads one `struct btrfs_ioctl_qgroup_limit_args`
    // (QgroupLimitArgs has its layout and size, which the request number encodes) through the
    // pointer, valid and exclusively ours for the duration of the call; the fd stays open.
    let r = unsafe {
        libc::ioctl(
            dir.as_fd().as_raw_fd(),
            BTRFS_IOC_QGROUP_LIMIT as _,
            &mut args as *mut QgroupLimitArgs,
        )
    };
    nix::Error::result(r).map(drop)
}

/// Give the home (a subvolume root, opened by the caller) its limit.
pub fn apply(home: &OwnedFd, path: &str, q: DiskQuota) -> Result<(), DiskError> {
    if !is_subvolume(home).map_err(sys("fstat", path))? {
        return Err(DiskError::NotSubvolume {
            path: path.to_owned(),
        });
    }
    qgroup_limit(home, &q.limit()).map_err(|e| match e {
        nix::Error::ENOTCONN => DiskError::QuotasOff {
            path: path.to_owned(),
        },
        e => sys("BTRFS_IOC_QGROUP_LIMIT", path)(e),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::egress::DEFAULT_QUOTA;

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size(" 3GB ").unwrap(), 3 << 30);
        for bad in ["", "G", "2X", "-1G", "1.5G", "2 G G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_configuration_sets_the_quota_and_refuses_unknown_keys() {
        assert_eq!(parse("").unwrap().bytes, DEFAULT_QUOTA);
        assert_eq!(
            parse("[sandbox]\ndisk_quota = \"32M\"\negress = \"internet\"")
                .unwrap()
                .bytes,
            32 << 20
        );
        assert!(matches!(
            parse("[sandbox]\ndisk_qouta = \"1G\""),
            Err(DiskError::Config(_))
        ));
        assert!(parse("[sandbox]\ndisk_quota = \"512K\"")
            .unwrap_err()
            .to_string()
            .contains("less than"));
        assert!(parse("[sandbox]\ndisk_quota = 5").is_err());
        // The egress parser accepts the quota key in turn.
        assert!(crate::egress::parse("[sandbox]\ndisk_quota = \"1G\"").is_ok());
    }

    #[test]
    fn the_kernel_structs_and_requests_match_linux_btrfs_h() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<QgroupLimitArgs>(), 48);
        assert_eq!(BTRFS_IOC_SUBVOL_CREATE, 0x5000_940e);
        assert_eq!(BTRFS_IOC_QGROUP_LIMIT, 0x8030_942b);
        assert_eq!(std::mem::size_of::<FsInfoArgs>(), 1024);
        assert_eq!(BTRFS_IOC_FS_INFO, 0x8400_941f);
        let l = DiskQuota { bytes: 32 << 20 }.limit();
        assert_eq!(l.flags, 3);
        assert_eq!(
            (l.max_rfer, l.max_excl, l.rsv_rfer),
            (32 << 20, 32 << 20, 0)
        );
        assert_eq!(DiskQuota { bytes: 2 << 30 }.to_string(), "2G");
        assert_eq!(DiskQuota { bytes: 1_500_000 }.to_string(), "1500000");
    }
}
