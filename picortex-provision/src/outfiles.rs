//! Files the agent leaves in its home's `outbox/` to be sent to the chat (media out). The helper
//! reads them as root on the gateway's behalf, so every step works on descriptors and follows
//! nothing the chat's user could have planted: `outbox` is opened O_NOFOLLOW|O_DIRECTORY in a
//! home opened the same way and owned by the user; each entry is opened O_NOFOLLOW|O_NONBLOCK
//! (a symlink is refused, never followed; only regular files; names are single components, so no
//! `..`), checked for size and a type Linq accepts, and copied into a memory file whose hash the
//! gateway records. Nothing is removed until the gateway has recorded the file (`clear`), and
//! then only if the name still holds the same bytes.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{fstat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use sha2::{Digest, Sha256};

pub use picortex_proto::turn::OUTBOX_DIR;
/// Most files taken from one outbox at a time.
pub const MAX_FILES: usize = 10;

const DIR: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_RDONLY);
const FILE: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_CLOEXEC);

/// The content type Linq is sent for a file name, from the types it accepts for upload; `None`
/// for anything else (WebP, SVG, FLAC, OGG and executables are rejected by Linq; unknown
/// extensions are not guessed).
pub fn content_type(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "tif" | "tiff" => "image/tiff",
        "bmp" => "image/bmp",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "m4v" => "video/x-m4v",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/x-m4a",
        "wav" => "audio/x-wav",
        "aif" | "aiff" => "audio/x-aiff",
        "aac" => "audio/aac",
        "caf" => "audio/x-caf",
        "amr" => "audio/amr",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "rtf" => "text/rtf",
        "vcf" => "text/vcard",
        "ics" => "text/calendar",
        "json" => "application/json",
        "zip" => "application/zip",
        "gz" => "application/x-gzip",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "epub" => "application/epub+zip",
        _ => return None,
    })
}

/// A file taken from the outbox: its name, type, size, sha256 hex and a memory copy.
pub struct Taken {
    pub name: String,
    pub mime: String,
    pub size: u64,
    pub sha256: String,
    pub copy: OwnedFd,
}

/// What `collect` found: files to send, and (name, reason) for entries it refused.
#[derive(Default)]
pub struct Collected {
    pub files: Vec<Taken>,
    pub refused: Vec<(String, String)>,
}

fn open_outbox(home: &Path, uid: u32) -> Result<Option<OwnedFd>, String> {
    let h = open(home, DIR, Mode::empty()).map_err(|e| format!("{}: {e}", home.display()))?;
    let st = fstat(&h).map_err(|e| e.to_string())?;
    if st.st_uid != uid {
        return Err(format!("{} is not the chat user's", home.display()));
    }
    let d = match openat(&h, OUTBOX_DIR, DIR, Mode::empty()) {
        Ok(d) => d,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
            return Err("outbox is a symlink or not a directory; refusing it".into())
        }
        Err(e) => return Err(format!("outbox: {e}")),
    };
    if fstat(&d).map_err(|e| e.to_string())?.st_uid != uid {
        return Err("outbox is not the chat user's".into());
    }
    Ok(Some(d))
}

fn names(dir: &OwnedFd) -> Result<Vec<String>, String> {
    let dup = nix::unistd::dup(dir).map_err(|e| e.to_string())?;
    let mut d = nix::dir::Dir::from_fd(dup).map_err(|e| e.to_string())?;
    let mut out: Vec<String> = d
        .iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
        .filter(|n| n != "." && n != "..")
        .collect();
    out.sort();
    Ok(out)
}

/// Hash and copy an open file into a memory file, refusing more than `cap` bytes.
fn copy_hashed(src: OwnedFd, cap: u64) -> Result<(OwnedFd, String, u64), String> {
    let mem =
        nix::sys::memfd::memfd_create(c"picortex-outbox", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| format!("memfd: {e}"))?;
    let mut out = std::fs::File::from(mem);
    let mut src = std::fs::File::from(src).take(cap + 1);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > cap {
            return Err(format!("larger than {cap} bytes"));
        }
        let chunk = buf.get(..n).unwrap_or_default();
        h.update(chunk);
        out.write_all(chunk).map_err(|e| e.to_string())?;
    }
    Ok((out.into(), hex::encode(h.finalize()), size))
}

/// Take copies of the sendable files in `home/outbox/` (at most [`MAX_FILES`], each at most `cap`
/// bytes). Names starting with `.` are left alone (files being written).
pub fn collect(home: &Path, uid: u32, cap: u64) -> Result<Collected, String> {
    let mut c = Collected::default();
    let Some(dir) = open_outbox(home, uid)? else {
        return Ok(c);
    };
    for name in names(&dir)?.into_iter().filter(|n| !n.starts_with('.')) {
        if c.files.len() >= MAX_FILES {
            break;
        }
        let refuse = |c: &mut Collected, why: &str| c.refused.push((name.clone(), why.to_owned()));
        let fd = match openat(&dir, name.as_str(), FILE, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => {
                refuse(&mut c, "a symlink (only regular files are sent)");
                continue;
            }
            Err(e) => {
                refuse(&mut c, &format!("cannot open: {e}"));
                continue;
            }
        };
        let st = fstat(&fd).map_err(|e| e.to_string())?;
        if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
            refuse(&mut c, "not a regular file");
            continue;
        }
        if st.st_uid != uid {
            refuse(&mut c, "not the chat user's file");
            continue;
        }
        let Some(mime) = content_type(&name) else {
            refuse(
                &mut c,
                "a type Linq does not take (see README: files the agent sends)",
            );
            continue;
        };
        if st.st_size as u64 > cap {
            refuse(&mut c, &format!("larger than {cap} bytes"));
            continue;
        }
        match copy_hashed(fd, cap) {
            Ok((copy, sha256, size)) => c.files.push(Taken {
                name: name.clone(),
                mime: mime.to_owned(),
                size,
                sha256,
                copy,
            }),
            Err(e) => refuse(&mut c, &e),
        }
    }
    Ok(c)
}

/// Remove each `(name, sha256)` from the outbox if that name still holds those bytes; returns how
/// many were removed.
pub fn clear(home: &Path, uid: u32, done: &[(String, String)]) -> Result<u32, String> {
    let Some(dir) = open_outbox(home, uid)? else {
        return Ok(0);
    };
    let mut n = 0;
    for (name, sha) in done {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            continue;
        }
        let Ok(fd) = openat(&dir, name.as_str(), FILE, Mode::empty()) else {
            continue;
        };
        let Ok((_, got, _)) = copy_hashed(fd, picortex_proto::bus::INBOX_MAX_BYTES) else {
            continue;
        };
        if &got == sha && unlinkat(&dir, name.as_str(), UnlinkatFlags::NoRemoveDir).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn only_regular_files_of_known_types_are_taken_and_symlinks_never_followed() {
        let home = tempfile::tempdir().unwrap();
        let out = home.path().join(OUTBOX_DIR);
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("report.pdf"), b"%PDF-1.4 x").unwrap();
        std::fs::write(out.join("tool.exe"), b"MZ").unwrap();
        std::fs::write(out.join(".partial.txt"), b"...").unwrap();
        std::fs::write(out.join("big.txt"), vec![b'x'; 100]).unwrap();
        let secret = tempfile::tempdir().unwrap();
        std::fs::write(secret.path().join("s.txt"), b"secret").unwrap();
        std::os::unix::fs::symlink(secret.path().join("s.txt"), out.join("link.txt")).unwrap();
        std::fs::create_dir(out.join("dir.txt")).unwrap();
        let c = collect(home.path(), me(), 50).unwrap();
        let taken: Vec<&str> = c.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(taken, ["report.pdf"]);
        assert_eq!(c.files[0].mime, "application/pdf");
        assert_eq!(c.files[0].size, 10);
        let refused: Vec<&str> = c.refused.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(refused, ["big.txt", "dir.txt", "link.txt", "tool.exe"]);
        // The copy holds the bytes.
        let mut s = String::new();
        let mut f = std::fs::File::from(c.files.into_iter().next().unwrap().copy);
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "%PDF-1.4 x");
    }

    #[test]
    fn clearing_removes_only_what_was_recorded_and_unchanged() {
        let home = tempfile::tempdir().unwrap();
        let out = home.path().join(OUTBOX_DIR);
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("a.txt"), b"one").unwrap();
        std::fs::write(out.join("b.txt"), b"two").unwrap();
        let c = collect(home.path(), me(), 1000).unwrap();
        let done: Vec<(String, String)> = c
            .files
            .iter()
            .map(|f| (f.name.clone(), f.sha256.clone()))
            .collect();
        std::fs::write(out.join("b.txt"), b"changed since").unwrap();
        assert_eq!(clear(home.path(), me(), &done).unwrap(), 1);
        assert!(!out.join("a.txt").exists());
        assert!(out.join("b.txt").exists(), "a changed file is not removed");
        assert_eq!(
            clear(home.path(), me(), &[("../x".into(), "0".into())]).unwrap(),
            0
        );
    }

    #[test]
    fn a_symlinked_outbox_is_refused_and_a_missing_one_is_empty() {
        let home = tempfile::tempdir().unwrap();
        assert!(collect(home.path(), me(), 10).unwrap().files.is_empty());
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), home.path().join(OUTBOX_DIR)).unwrap();
        assert!(collect(home.path(), me(), 10).is_err());
    }

    #[test]
    fn types_follow_what_linq_accepts() {
        assert_eq!(content_type("a.JPG"), Some("image/jpeg"));
        assert_eq!(content_type("a.webp"), None);
        assert_eq!(content_type("a.svg"), None);
        assert_eq!(content_type("a.flac"), None);
        assert_eq!(content_type("a.ogg"), None);
        assert_eq!(content_type("a.sh"), None);
        assert_eq!(content_type("noext"), None);
    }
}
