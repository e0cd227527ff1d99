//! The self-checks picortex-run makes before it does anything for a turn: it must run as a chat
//! user (never root, no capabilities) in that user's own 0700 home. The facts are gathered from
//! the system in one place ([`gather_facts`]) and judged by a pure function ([`check`]), so the
//! rules are unit-tested without a chat user; the binary always runs both.

use nix::fcntl::{open, OFlag};
use nix::sys::stat::{fstat, Mode};
use nix::unistd::{getegid, geteuid, getgid, getuid, User};
use picortex_proto::ids::ChatTag;
use std::fmt;
use std::path::{Path, PathBuf};

/// Who and where picortex-run runs, once the checks passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `chat-<tag>`
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub tag: ChatTag,
    /// The user's passwd home, which is also the working directory.
    pub home: PathBuf,
}

/// Why picortex-run will not run the agent. Becomes the `error` of a `refused` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl Refusal {
    pub fn new(msg: impl Into<String>) -> Self {
        Refusal(msg.into())
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// What `fstat` says about a directory opened with `O_DIRECTORY|O_NOFOLLOW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirStat {
    pub uid: u32,
    /// Permission bits, including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub dev: u64,
    pub ino: u64,
}

/// Everything the checks look at, read from the running process.
#[derive(Debug, Clone)]
pub struct Facts {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    pub passwd: Result<Passwd, String>,
    pub cwd: Result<PathBuf, String>,
    pub cwd_stat: Result<DirStat, String>,
    pub home_stat: Result<DirStat, String>,
    /// (set name, capability names or the error reading them), for the effective, permitted,
    /// inheritable and ambient sets.
    pub caps: Vec<(&'static str, Result<Vec<String>, String>)>,
}

#[allow(clippy::unnecessary_cast)] // st_dev/st_ino widths differ between targets
fn stat_dir(path: &Path) -> Result<DirStat, String> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = open(path, flags, Mode::empty()).map_err(|e| match e {
        nix::errno::Errno::ELOOP => format!("{} is a symlink", path.display()),
        nix::errno::Errno::ENOTDIR => format!("{} is not a directory", path.display()),
        e => format!("cannot open {}: {e}", path.display()),
    })?;
    let st = fstat(&fd).map_err(|e| format!("cannot fstat {}: {e}", path.display()))?;
    if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFDIR {
        return Err(format!("{} is not a directory", path.display()));
    }
    Ok(DirStat {
        uid: st.st_uid,
        mode: (st.st_mode as u32) & 0o7777,
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
    })
}

/// Read the facts from the system: ids, passwd entry, cwd, the home's fstat, capabilities.
pub fn gather_facts() -> Facts {
    let uid = getuid();
    let passwd = match User::from_uid(uid) {
        Ok(Some(u)) => Ok(Passwd {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        }),
        Ok(None) => Err(format!("uid {uid} has no passwd entry")),
        Err(e) => Err(format!("cannot look up uid {uid}: {e}")),
    };
    let home_stat = match &passwd {
        Ok(p) => stat_dir(&p.home),
        Err(e) => Err(e.clone()),
    };
    let cwd = nix::unistd::getcwd().map_err(|e| format!("cannot get the working directory: {e}"));
    let cwd_stat = stat_dir(Path::new("."));
    let caps = [
        ("effective", caps::CapSet::Effective),
        ("permitted", caps::CapSet::Permitted),
        ("inheritable", caps::CapSet::Inheritable),
        ("ambient", caps::CapSet::Ambient),
    ]
    .into_iter()
    .map(|(name, set)| {
        let read = caps::read(None, set).map_err(|e| e.to_string()).map(|s| {
            let mut v: Vec<String> = s.iter().map(|c| c.to_string()).collect();
            v.sort();
            v
        });
        (name, read)
    })
    .collect();
    Facts {
        uid: uid.as_raw(),
        euid: geteuid().as_raw(),
        gid: getgid().as_raw(),
        egid: getegid().as_raw(),
        passwd,
        cwd,
        cwd_stat,
        home_stat,
        caps,
    }
}

/// Judge the facts. Every rule is here; the first one broken is the refusal.
pub fn check(f: &Facts) -> Result<Identity, Refusal> {
    let refuse = |m: String| Err(Refusal(m));
    if f.uid == 0 || f.euid == 0 {
        return refuse(format!(
            "refusing to run as root (uid {}, euid {})",
            f.uid, f.euid
        ));
    }
    if f.uid != f.euid || f.gid != f.egid {
        return refuse(format!(
            "real and effective ids differ (uid {}, euid {}, gid {}, egid {})",
            f.uid, f.euid, f.gid, f.egid
        ));
    }
    if f.gid == 0 {
        return refuse("refusing to run with group root".to_owned());
    }
    let pw = match &f.passwd {
        Ok(p) => p,
        Err(e) => return refuse(e.clone()),
    };
    let tag = match ChatTag::from_user_name(&pw.name) {
        Ok(t) => t,
        Err(_) => {
            return refuse(format!(
                "user {:?} (uid {}) is not a chat user (chat-<hex>)",
                pw.name, f.uid
            ))
        }
    };
    if pw.home != Path::new(&tag.home()) {
        return refuse(format!(
            "home of {} is {}, expected {}",
            pw.name,
            pw.home.display(),
            tag.home()
        ));
    }
    let home = match &f.home_stat {
        Ok(s) => s,
        Err(e) => return refuse(format!("home: {e}")),
    };
    if home.uid != f.uid {
        return refuse(format!(
            "home {} is owned by uid {}, not {}",
            pw.home.display(),
            home.uid,
            f.uid
        ));
    }
    if home.mode != 0o700 {
        return refuse(format!(
            "home {} has mode {:04o}, expected 0700",
            pw.home.display(),
            home.mode
        ));
    }
    match &f.cwd {
        Ok(c) if c == &pw.home => {}
        Ok(c) => {
            return refuse(format!(
                "working directory is {}, expected {}",
                c.display(),
                pw.home.display()
            ))
        }
        Err(e) => return refuse(e.clone()),
    }
    match &f.cwd_stat {
        Ok(c) if (c.dev, c.ino) == (home.dev, home.ino) => {}
        Ok(_) => {
            return refuse(
                "working directory is not the home directory (different inode)".to_owned(),
            )
        }
        Err(e) => return refuse(format!("working directory: {e}")),
    }
    for (set, read) in &f.caps {
        match read {
            Ok(v) if v.is_empty() => {}
            Ok(v) => {
                return refuse(format!(
                    "{set} capability set is not empty: {}",
                    v.join(",")
                ))
            }
            Err(e) => return refuse(format!("cannot read the {set} capability set: {e}")),
        }
    }
    Ok(Identity {
        user: pw.name.clone(),
        uid: f.uid,
        gid: f.gid,
        tag,
        home: pw.home.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Facts {
        let home = PathBuf::from("/var/lib/picortex/chats/deadbeef");
        let st = DirStat {
            uid: 60100,
            mode: 0o700,
            dev: 1,
            ino: 42,
        };
        Facts {
            uid: 60100,
            euid: 60100,
            gid: 60100,
            egid: 60100,
            passwd: Ok(Passwd {
                name: "chat-deadbeef".into(),
                uid: 60100,
                gid: 60100,
                home: home.clone(),
            }),
            cwd: Ok(home),
            cwd_stat: Ok(st),
            home_stat: Ok(st),
            caps: ["effective", "permitted", "inheritable", "ambient"]
                .into_iter()
                .map(|s| (s, Ok(vec![])))
                .collect(),
        }
    }

    fn refused(f: Facts, needle: &str) {
        let e = check(&f).expect_err("accepted");
        assert!(e.0.contains(needle), "{e} does not mention {needle:?}");
    }

    #[test]
    fn a_chat_user_in_its_home_passes() {
        let id = check(&good()).unwrap();
        assert_eq!(id.user, "chat-deadbeef");
        assert_eq!(id.tag.as_str(), "deadbeef");
        assert_eq!(id.home, PathBuf::from("/var/lib/picortex/chats/deadbeef"));
        assert_eq!((id.uid, id.gid), (60100, 60100));
    }

    #[test]
    fn root_is_refused() {
        refused(Facts { uid: 0, ..good() }, "root");
        refused(Facts { euid: 0, ..good() }, "root");
        refused(
            Facts {
                gid: 0,
                egid: 0,
                ..good()
            },
            "group root",
        );
        refused(
            Facts {
                euid: 60101,
                ..good()
            },
            "differ",
        );
    }

    #[test]
    fn other_users_are_refused() {
        let mut f = good();
        f.passwd = Ok(Passwd {
            name: "picortex".into(),
            uid: 60100,
            gid: 60100,
            home: "/var/lib/picortex".into(),
        });
        refused(f, "not a chat user");
        let mut f = good();
        f.passwd = Ok(Passwd {
            name: "chat-../x".into(),
            uid: 60100,
            gid: 60100,
            home: "/tmp".into(),
        });
        refused(f, "not a chat user");
        refused(
            Facts {
                passwd: Err("uid 60100 has no passwd entry".into()),
                ..good()
            },
            "no passwd entry",
        );
    }

    #[test]
    fn home_must_be_the_chats_own() {
        let mut f = good();
        if let Ok(p) = &mut f.passwd {
            p.home = "/home/chat-deadbeef".into();
        }
        refused(f, "expected /var/lib/picortex/chats/deadbeef");
        let mut f = good();
        f.home_stat = Ok(DirStat {
            uid: 0,
            ..f.cwd_stat.clone().unwrap()
        });
        refused(f, "owned by uid 0");
        let mut f = good();
        f.home_stat = Ok(DirStat {
            mode: 0o750,
            ..f.cwd_stat.clone().unwrap()
        });
        refused(f, "mode 0750");
        let mut f = good();
        f.home_stat = Ok(DirStat {
            mode: 0o1700,
            ..f.cwd_stat.clone().unwrap()
        });
        refused(f, "mode 1700");
        refused(
            Facts {
                home_stat: Err("/x is a symlink".into()),
                ..good()
            },
            "symlink",
        );
    }

    #[test]
    fn cwd_must_be_the_home() {
        refused(
            Facts {
                cwd: Ok("/tmp".into()),
                ..good()
            },
            "working directory is /tmp",
        );
        refused(
            Facts {
                cwd_stat: Ok(DirStat {
                    uid: 60100,
                    mode: 0o700,
                    dev: 1,
                    ino: 43,
                }),
                ..good()
            },
            "inode",
        );
    }

    #[test]
    fn any_capability_is_refused() {
        for i in 0..4 {
            let mut f = good();
            f.caps[i].1 = Ok(vec!["CAP_NET_RAW".into()]);
            refused(f, "CAP_NET_RAW");
        }
        let mut f = good();
        f.caps[3].1 = Err("EINVAL".into());
        refused(f, "cannot read the ambient");
    }

    #[test]
    fn this_process_gathers_real_facts() {
        let f = gather_facts();
        assert_eq!(f.uid, getuid().as_raw());
        assert!(f.cwd.is_ok());
        assert!(f.cwd_stat.is_ok());
        assert_eq!(f.caps.len(), 4);
        // A developer or CI machine is not a chat user's unit.
        assert!(check(&f).is_err());
    }
}
