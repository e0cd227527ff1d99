//! The turn's one way out (SPEC T1). A turn unit has a network namespace of its own with only
//! loopback (`PrivateNetwork=yes`): nothing of the machine's network, its addresses or other
//! chats' sockets is there. picortex-run listens on `127.0.0.1:RELAY_PORT` in it and relays
//! each connection, byte for byte, to picortex-egress's Unix socket (bound into the unit), which
//! forwards the agent's API requests with the real credential and opens a `CONNECT` tunnel
//! where the operator's `[sandbox]` egress policy allows. The relay decides nothing itself.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use picortex_proto::egress::{relay_url, RELAY_PORT, SOCKET};

/// Connections relayed at once; more wait in the listen queue (picortex-egress has its own
/// per-chat bound).
pub const MAX_CONNECTIONS: usize = 64;

/// The variables that send the agent (and whatever it runs: curl, git, npm, pip) through the
/// relay: its API base URL and its HTTP(S) proxy, which are the same address.
pub fn agent_env() -> Vec<(String, String)> {
    let url = relay_url();
    let mut env = vec![("ANTHROPIC_BASE_URL".to_owned(), url.clone())];
    for name in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
        env.push((name.to_owned(), url.clone()));
    }
    // The API base URL is the relay itself: asked directly, not through the proxy.
    for name in ["NO_PROXY", "no_proxy"] {
        env.push((name.to_owned(), "127.0.0.1,localhost".to_owned()));
    }
    env
}

/// Whether this process is in a network namespace with nothing but loopback: a turn unit
/// without `PrivateNetwork=yes` would share the machine's network, and its agent could reach
/// what the relay is there to keep it from.
pub fn check_private_network() -> Result<(), String> {
    // /proc/self/net/dev lists the interfaces of this process's network namespace (the turn
    // may not open netlink sockets, so not getifaddrs).
    let dev = std::fs::read_to_string("/proc/self/net/dev")
        .map_err(|e| format!("/proc/self/net/dev: {e}"))?;
    check_interfaces(&interfaces(&dev))
}

/// The interface names of a `/proc/net/dev` table.
pub fn interfaces(dev: &str) -> Vec<String> {
    let mut names: Vec<String> = dev
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_owned())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn check_interfaces(names: &[String]) -> Result<(), String> {
    if names.iter().all(|n| n == "lo") {
        Ok(())
    } else {
        Err(format!(
            "the turn shares a network with the machine (interfaces {}); its unit must have \
             PrivateNetwork=yes (picortex-provision sets it)",
            names.join(", ")
        ))
    }
}

/// Listen on the turn's loopback and relay every connection to picortex-egress, in threads of
/// their own for as long as the process lives.
pub fn start() -> Result<(), String> {
    let listener = TcpListener::bind(("127.0.0.1", RELAY_PORT))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{RELAY_PORT} in the turn: {e}"))?;
    let target = PathBuf::from(SOCKET);
    std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || serve(listener, target))
        .map_err(|e| format!("cannot start the relay: {e}"))?;
    Ok(())
}

fn serve(listener: TcpListener, target: PathBuf) {
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("relay: more than {MAX_CONNECTIONS} connections at once; one closed");
            continue;
        }
        let (open, target) = (open.clone(), target.clone());
        let spawned = std::thread::Builder::new()
            .name("relay-conn".into())
            .spawn(move || {
                if let Err(e) = relay(tcp, &target) {
                    tracing::debug!("relay: {e}");
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            tracing::warn!("relay: cannot start a thread; connection closed");
        }
    }
}

/// Copy both ways until each side has said all it will.
fn relay(tcp: TcpStream, target: &std::path::Path) -> std::io::Result<()> {
    let unix = match UnixStream::connect(target) {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(
                "relay: cannot reach picortex-egress at {}: {e}",
                target.display()
            );
            return Err(e);
        }
    };
    let (tcp_in, unix_out) = (tcp.try_clone()?, unix.try_clone()?);
    let up = std::thread::Builder::new()
        .name("relay-up".into())
        .spawn(move || {
            pump(tcp_in, unix_out, |u: &UnixStream| {
                u.shutdown(Shutdown::Write)
            })
        })?;
    pump(unix, tcp, |t: &TcpStream| t.shutdown(Shutdown::Write));
    let _ = up.join();
    Ok(())
}

fn pump<R: Read, W: Write>(mut from: R, mut to: W, done: impl Fn(&W) -> std::io::Result<()>) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = done(&to);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_is_pointed_at_the_relay_for_its_api_and_as_its_proxy() {
        let env = agent_env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let url = format!("http://127.0.0.1:{RELAY_PORT}");
        for k in [
            "ANTHROPIC_BASE_URL",
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
        ] {
            assert_eq!(get(k), Some(url.as_str()), "{k}");
        }
        assert_eq!(get("NO_PROXY"), Some("127.0.0.1,localhost"));
    }

    #[test]
    fn only_a_network_of_loopback_alone_will_do() {
        let lo = "Inter-|   Receive\n face |bytes\n    lo:       0       0\n";
        assert_eq!(interfaces(lo), ["lo"]);
        check_interfaces(&interfaces(lo)).unwrap();
        let host = format!("{lo}  eth0: 1 2 3\n");
        let e = check_interfaces(&interfaces(&host)).unwrap_err();
        assert!(e.contains("eth0") && e.contains("PrivateNetwork"), "{e}");
    }

    #[test]
    fn bytes_go_through_both_ways_and_end_with_each_side() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("egress.sock");
        let upstream = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = upstream.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(&got).unwrap();
            s.write_all(b"!").unwrap();
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener, sock));
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"CONNECT x:443").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        c.read_to_string(&mut back).unwrap();
        assert_eq!(back, "CONNECT x:443!");
        echo.join().unwrap();
    }
}
