//! A Landlock domain of its own for every turn's agent (SPEC P2): just before the agent runs,
//! picortex-run restricts itself (and so every process the agent starts) so that nothing in the
//! turn can connect to an abstract Unix socket or signal a process created outside the turn —
//! another chat's listener, the host's, a leftover of an earlier turn. Abstract sockets live in
//! the network namespace and no file permission guards them; each turn now has a network
//! namespace of its own (`PrivateNetwork=yes`, see `relay`), and this scope stays as a second
//! wall. No filesystem or network access is handled: the unit's mount and network namespaces
//! do that.
//!
//! Landlock ABI 6 (Linux 6.12) is required. On an older kernel, or with Landlock disabled, the
//! turn is refused rather than run with a channel to other chats open: the error names the
//! requirement so the operator can fix the kernel (or its `lsm=` boot parameter).

use landlock::{
    make_bitflags, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetStatus, Scope,
};

/// Enter a new Landlock domain scoped for abstract Unix sockets and signals. Applies to the
/// calling thread and every process it starts afterwards; call it from the thread that spawns
/// the agent, after picortex-run's own setup.
pub fn enter_turn_domain() -> Result<(), String> {
    let why = |e: &dyn std::fmt::Display| {
        format!(
            "cannot scope the turn with Landlock ({e}); picortex needs Landlock ABI 6 \
             (Linux >= 6.12, with landlock in the lsm= list) to keep chats' abstract Unix \
             sockets and signals apart"
        )
    };
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .scope(make_bitflags!(Scope::{AbstractUnixSocket | Signal}))
        .map_err(|e| why(&e))?
        .create()
        .map_err(|e| why(&e))?
        .restrict_self()
        .map_err(|e| why(&e))?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(()),
        other => Err(why(&format!("ruleset {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

    fn name(n: &str) -> SocketAddr {
        SocketAddr::from_abstract_name(format!("picortex-scope-test-{}-{n}", std::process::id()))
            .unwrap()
    }

    // nextest runs each test in a process of its own, so the domain ends with it.
    #[test]
    fn outside_abstract_sockets_are_refused_inside_ones_are_not() {
        let outside = UnixListener::bind_addr(&name("outside")).unwrap();
        UnixStream::connect_addr(&name("outside")).unwrap();
        enter_turn_domain().unwrap();
        let e = UnixStream::connect_addr(&name("outside")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::EPERM), "{e}");
        let _inside = UnixListener::bind_addr(&name("inside")).unwrap();
        UnixStream::connect_addr(&name("inside")).unwrap();
        drop(outside);
    }
}
