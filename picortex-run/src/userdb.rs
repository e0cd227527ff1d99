//! The turn's user database must be the helper's view of it: in a turn, `/etc/passwd` and
//! `/etc/group` are bound over the real files and hold only root, nobody (nogroup) and the
//! chat's own user, so a turn learns no other chat's user name (SPEC P5, issue 7).
//!
//! That view does not survive a change of the real files: useradd and userdel replace them by a
//! rename, and the kernel detaches every mount on a replaced file in every namespace, after which
//! the real files show through. Chat users are records of /etc/userdb (picortex-provision's
//! `userdb`), so adding a chat renames nothing; but the operator's own useradd still does. So
//! once a turn's request is in, picortex-run looks: anything but the view and the turn goes
//! back to the gateway (`stale_sandbox`), which runs it again in a fresh unit, with a fresh
//! view (picortexd's `turns::again`).

use picortex_proto::ids::{VIEW_GROUPS, VIEW_USERS};

/// Whether `passwd` and `group` (the files' text) are the view for user `own`: every entry one
/// of the view's accounts. `own` is `None` when this process could not look itself up: then one
/// entry outside the view's accounts may be its own, and a second is the real database showing
/// through. Err names the first entry that cannot be the view's (its name only).
pub fn check(passwd: &str, group: &str, own: Option<&str>) -> Result<(), String> {
    for (file, text, kept) in [
        ("/etc/passwd", passwd, VIEW_USERS),
        ("/etc/group", group, VIEW_GROUPS),
    ] {
        let mut others = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.split(':').next().unwrap_or(""))
            .filter(|name| Some(*name) != own && !kept.contains(name));
        let other = match own {
            Some(_) => others.next(),
            None => others.nth(1),
        };
        if let Some(name) = other {
            return Err(format!(
                "{file} is not this turn's view of the user database (it lists {name:?}): it was \
                 replaced after the unit started (a user was added or removed)"
            ));
        }
    }
    Ok(())
}

/// `check` on this process's `/etc/passwd` and `/etc/group`.
pub fn check_system(own: Option<&str>) -> Result<(), String> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
    check(&read("/etc/passwd")?, &read("/etc/group")?, own)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIEW_P: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nchat-aaaa1111:x:1900000001:1900000001:picortex chat aaaa1111:/var/lib/picortex/chats/aaaa1111:/usr/sbin/nologin\n";
    const VIEW_G: &str = "root:x:0:\nnogroup:x:65534:\nchat-aaaa1111:x:1900000001:\n";

    #[test]
    fn the_helpers_view_passes() {
        assert_eq!(check(VIEW_P, VIEW_G, Some("chat-aaaa1111")), Ok(()));
        // Fewer entries (a machine without nobody) is still the view.
        assert_eq!(
            check("chat-aaaa1111:x:1:1::/h:/n\n", "", Some("chat-aaaa1111")),
            Ok(())
        );
    }

    #[test]
    fn a_user_that_cannot_be_looked_up_is_told_apart_from_a_detached_view() {
        // The view: at most one account of its own besides the kept ones.
        assert_eq!(check(VIEW_P, VIEW_G, None), Ok(()));
        // The real files showing through: many.
        let real = format!("{VIEW_P}daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n");
        let e = check(&real, VIEW_G, None).unwrap_err();
        assert!(e.contains("/etc/passwd") && e.contains("daemon"), "{e}");
    }

    #[test]
    fn the_real_files_showing_through_are_refused() {
        let real = format!("{VIEW_P}daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n");
        let e = check(&real, VIEW_G, Some("chat-aaaa1111")).unwrap_err();
        assert!(e.contains("/etc/passwd") && e.contains("daemon"), "{e}");
        let other = format!("{VIEW_G}chat-bbbb2222:x:1900000002:\n");
        let e = check(VIEW_P, &other, Some("chat-aaaa1111")).unwrap_err();
        assert!(
            e.contains("/etc/group") && e.contains("chat-bbbb2222"),
            "{e}"
        );
        // Another chat's view is not this chat's.
        assert!(check(VIEW_P, VIEW_G, Some("chat-bbbb2222")).is_err());
    }
}
