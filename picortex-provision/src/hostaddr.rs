//! The host's own addresses, which no turn may reach (issue 7: a turn reached listeners through
//! an address assigned to the host). The I/O half of the fence: `egress` stays pure (parsing
//! and range arithmetic, fuzzed on its own), this reads the interfaces.

use crate::egress::{parse_addresses, Range, LIST_ADDRESSES_ARG};

const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;

/// Every address assigned to the machine's interfaces (both families, loopback included), each
/// as a single-address range: a turn must not reach the host's own listeners through them,
/// whatever range they fall in. Read at each StartTurn, so a new address fences the next turn
/// (a spare keeps the list of the moment it started). Only a process in the host's network
/// namespace sees them: the helper, which has a private one, asks `probe_host_addresses`.
pub fn host_addresses() -> Result<Vec<Range>, String> {
    let ifs = nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))?;
    let mut v: Vec<Range> = Vec::new();
    for i in ifs {
        let Some(a) = i.address else { continue };
        let r = if let Some(v4) = a.as_sockaddr_in() {
            (AF_INET, v4.ip().octets().to_vec(), 32)
        } else if let Some(v6) = a.as_sockaddr_in6() {
            (AF_INET6, v6.ip().octets().to_vec(), 128)
        } else {
            continue;
        };
        if !v.contains(&r) {
            v.push(r);
        }
    }
    Ok(v)
}

/// How long a probe's answer is used: every StartTurn of a burst would otherwise start a unit of
/// its own (a dynamic user, a sandbox) just to learn what the last one learnt. A spare already
/// keeps the fence of the moment it started for longer (`turns.spare_ttl_s`).
const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(10);

static CACHE: std::sync::Mutex<Option<(std::time::Instant, Vec<Range>)>> =
    std::sync::Mutex::new(None);

/// `probe_host_addresses`, reusing an answer younger than `CACHE_FOR`.
pub async fn host_addresses_for_turn(conn: &zbus::Connection) -> Result<Vec<Range>, String> {
    if let Ok(c) = CACHE.lock() {
        if let Some((_, v)) = c.as_ref().filter(|(at, _)| at.elapsed() < CACHE_FOR) {
            return Ok(v.clone());
        }
    }
    let v = probe_host_addresses(conn).await?;
    if let Ok(mut c) = CACHE.lock() {
        *c = Some((std::time::Instant::now(), v.clone()));
    }
    Ok(v)
}

/// The machine's addresses, from a short-lived unit systemd runs in the host's network
/// namespace (the helper keeps PrivateNetwork=yes): this binary with `LIST_ADDRESSES_ARG`,
/// as a dynamic user with no capabilities, its stdout a pipe back to the helper.
pub async fn probe_host_addresses(conn: &zbus::Connection) -> Result<Vec<Range>, String> {
    use std::io::Read;
    use zbus::{Fd, OwnedVariant as OwnedValue, Variant as Value};
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| format!("/proc/self/exe: {e}"))?;
    let exe = exe.display().to_string();
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unit = format!(
        "picortex-host-addresses-{}-{}.service",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let v = |x: Value<'_>| OwnedValue::try_from(x).map_err(|e| e.to_string());
    let props: Vec<(String, OwnedValue)> = vec![
        (
            "Description".into(),
            v(Value::from(
                "picortex: list the host's addresses for the turn fence",
            ))?,
        ),
        ("Type".into(), v(Value::from("oneshot"))?),
        (
            "ExecStart".into(),
            v(Value::from(vec![(
                exe.clone(),
                vec![exe, LIST_ADDRESSES_ARG.to_owned()],
                false,
            )]))?,
        ),
        ("DynamicUser".into(), v(Value::from(true))?),
        ("CapabilityBoundingSet".into(), v(Value::from(0u64))?),
        ("NoNewPrivileges".into(), v(Value::from(true))?),
        ("ProtectSystem".into(), v(Value::from("strict"))?),
        ("PrivateDevices".into(), v(Value::from(true))?),
        (
            "IPAddressDeny".into(),
            v(Value::from(vec![
                (2i32, vec![0u8; 4], 0u32),
                (10i32, vec![0u8; 16], 0u32),
            ]))?,
        ),
        (
            "RestrictAddressFamilies".into(),
            v(Value::from((true, vec!["AF_NETLINK".to_owned()])))?,
        ),
        ("CollectMode".into(), v(Value::from("inactive-or-failed"))?),
        (
            "StandardOutputFileDescriptor".into(),
            v(Value::from(Fd::from(std::os::fd::AsFd::as_fd(&w))))?,
        ),
        ("StandardError".into(), v(Value::from("journal"))?),
    ];
    let mgr = zbus_systemd::systemd1::ManagerProxy::new(conn)
        .await
        .map_err(|e| format!("systemd: {e}"))?;
    mgr.start_transient_unit(unit, "fail".into(), props, vec![])
        .await
        .map_err(|e| format!("systemd: address probe: {e}"))?;
    // systemd holds its own copy of the write end until the unit is gone: EOF means done.
    drop(w);
    let text = tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        std::fs::File::from(r)
            .take(1 << 20)
            .read_to_string(&mut s)
            .map(|_| s)
    });
    let text = tokio::time::timeout(std::time::Duration::from_secs(10), text)
        .await
        .map_err(|_| "address probe: no answer in 10 s".to_owned())?
        .map_err(|e| format!("address probe: {e}"))?
        .map_err(|e| format!("address probe: {e}"))?;
    let v = parse_addresses(&text)?;
    if v.is_empty() {
        return Err("address probe listed no address".into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::egress::format_range;

    #[test]
    fn host_addresses_include_loopback_and_survive_the_probes_format() {
        let h = host_addresses().unwrap();
        assert!(h.contains(&(2, vec![127, 0, 0, 1], 32)), "{h:?}");
        let text: String = h.iter().map(|r| format_range(r) + "\n").collect();
        assert_eq!(parse_addresses(&text).unwrap(), h);
        assert!(parse_addresses("192.0.2.1\nrm -rf /\n").is_err());
    }
}
