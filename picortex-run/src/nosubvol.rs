//! Keeps a turn inside its home's disk quota (SPEC P7). A chat home is a btrfs subvolume whose
//! quota group the helper limits, but btrfs lets any user create subvolumes and snapshots in a
//! directory it owns, and their space counts in quota groups of their own, outside the home's
//! limit. So before the agent starts, picortex-run installs a seccomp filter (inherited by
//! every child, and irremovable under no_new_privs) that refuses btrfs ioctls (type 0x94) with
//! EPERM, except the reflink and dedupe ones (FICLONE, FICLONERANGE, FIDEDUPERANGE): those
//! share extents inside the home, where they stay counted. Other system calls are systemd's
//! business (the unit's SystemCallFilter=); this filter only adds an argument check it cannot.

#![allow(unsafe_code)] // one prctl, below, with its SAFETY note

use libc::sock_filter;

/// BPF_LD | BPF_W | BPF_ABS
const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JEQ | BPF_K
const BPF_JEQ_K: u16 = 0x15;
/// BPF_ALU | BPF_AND | BPF_K
const BPF_AND_K: u16 = 0x54;
/// BPF_RET | BPF_K
const BPF_RET_K: u16 = 0x06;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Offsets in `struct seccomp_data`: nr, arch, and the low 32 bits of args[1] (an ioctl's
/// request; the kernel reads it as an unsigned int).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
#[cfg(target_endian = "little")]
const OFF_ARG1_LO: u32 = 16 + 8;
#[cfg(target_endian = "big")]
const OFF_ARG1_LO: u32 = 16 + 8 + 4;

const BTRFS_IOCTL_TYPE: u32 = 0x94 << 8;
/// FICLONE, FICLONERANGE, FIDEDUPERANGE: btrfs-type numbers that stay allowed.
const SHARING: [u32; 3] = [9, 13, 54];

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}
fn jeq(k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: BPF_JEQ_K,
        jt,
        jf,
        k,
    }
}

/// The filter program (classic BPF). A foreign architecture is refused outright (the unit
/// allows only the native one anyway).
pub fn program() -> Vec<sock_filter> {
    vec![
        /* 0 */ stmt(BPF_LD_W_ABS, OFF_ARCH),
        /* 1 */ jeq(AUDIT_ARCH, 1, 0),
        /* 2 */ stmt(BPF_RET_K, RET_EPERM),
        /* 3 */ stmt(BPF_LD_W_ABS, OFF_NR),
        /* 4 */ jeq(libc::SYS_ioctl as u32, 0, 9),
        /* 5 */ stmt(BPF_LD_W_ABS, OFF_ARG1_LO),
        /* 6 */ stmt(BPF_AND_K, 0xff00),
        /* 7 */ jeq(BTRFS_IOCTL_TYPE, 0, 6),
        /* 8 */ stmt(BPF_LD_W_ABS, OFF_ARG1_LO),
        /* 9 */ stmt(BPF_AND_K, 0xff),
        /* 10 */ jeq(SHARING[0], 3, 0),
        /* 11 */ jeq(SHARING[1], 2, 0),
        /* 12 */ jeq(SHARING[2], 1, 0),
        /* 13 */ stmt(BPF_RET_K, RET_EPERM),
        /* 14 */ stmt(BPF_RET_K, RET_ALLOW),
    ]
}

/// Install the filter on this process; everything it starts from now on inherits it.
pub fn install() -> Result<(), String> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;
    let prog = program();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut sock_filter,
    };
    // SAFETY: PR_SET_SECCOMP with SECCOMP_MODE_FILTER reads `fprog` and the `len` instructions
    // it points to, both alive until the call returns (the kernel copies the program); nothing
    // is written through them.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "installing the seccomp filter that keeps the agent from creating btrfs subvolumes: {}",
            std::io::Error::last_os_error()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Just enough of a classic-BPF interpreter to run `program()` on one system call.
    fn run(prog: &[sock_filter], arch: u32, nr: u32, arg1: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        data[24..32].copy_from_slice(&arg1.to_ne_bytes());
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let o = i.k as usize;
                    acc = u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
                }
                BPF_AND_K => acc &= i.k,
                BPF_JEQ_K => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
                BPF_RET_K => return i.k,
                c => panic!("unexpected instruction {c:#x}"),
            }
        }
    }

    #[test]
    fn btrfs_ioctls_are_refused_but_reflinks_and_everything_else_pass() {
        let p = program();
        let ioctl = libc::SYS_ioctl as u32;
        let refused = [
            0x5000_940e_u64,       // BTRFS_IOC_SUBVOL_CREATE
            0x5000_9401,           // BTRFS_IOC_SNAP_CREATE
            0x5000_9417,           // BTRFS_IOC_SNAP_CREATE_V2
            0x5000_9418,           // BTRFS_IOC_SUBVOL_CREATE_V2
            0x4008_941a,           // BTRFS_IOC_SUBVOL_SETFLAGS
            0xffff_ffff_5000_940e, // high bits the kernel ignores
        ];
        for cmd in refused {
            assert_eq!(run(&p, AUDIT_ARCH, ioctl, cmd), RET_EPERM, "{cmd:#x}");
        }
        let allowed = [
            0x4004_9409_u64, // FICLONE
            0x4020_940d,     // FICLONERANGE
            0xc018_9436,     // FIDEDUPERANGE
            0x5401,          // TCGETS
            0x8008_6601,     // FS_IOC_GETFLAGS
        ];
        for cmd in allowed {
            assert_eq!(run(&p, AUDIT_ARCH, ioctl, cmd), RET_ALLOW, "{cmd:#x}");
        }
        // Other system calls pass whatever their second argument; a foreign arch does not.
        assert_eq!(
            run(&p, AUDIT_ARCH, libc::SYS_openat as u32, 0x5000_940e),
            RET_ALLOW
        );
        assert_eq!(run(&p, 0x4000_0003, ioctl, 0x5401), RET_EPERM);
    }
}
