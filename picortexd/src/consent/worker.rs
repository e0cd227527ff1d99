//! The broker's clock and hands: expires pending disclosures when their TTL runs out (no
//! webhook needed: a timer over the log, so a restart loses nothing), and carries out approved
//! imports through the helper's ImportFile, recording each copy in `bridge_events`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::store;
use crate::bus::{Bus, BusError};
use crate::store::{now_ms, Store};

/// How often the timer looks at the log at most; it wakes earlier for the next expiry.
const TICK: Duration = Duration::from_secs(5);

/// Wakes the worker (an approved import): shared by `ingest` and the loop, defined once here.
fn waker() -> &'static Notify {
    static W: std::sync::OnceLock<Notify> = std::sync::OnceLock::new();
    W.get_or_init(Notify::new)
}

pub fn wake() {
    waker().notify_one();
}

pub async fn run(store: Store, bus: Arc<Bus>, outbox_wake: Arc<Notify>, turns_wake: Arc<Notify>) {
    loop {
        match store.call(|t| store::expire_due(t, now_ms())).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(
                    expired = n,
                    "disclosures expired without the owner's answer"
                );
                outbox_wake.notify_one();
            }
            Err(e) => tracing::error!(error = %e, "cannot expire disclosures"),
        }
        imports(&store, &bus, &outbox_wake, &turns_wake).await;
        let next = store
            .call(store::next_expiry)
            .await
            .ok()
            .flatten()
            .map(|at| {
                Duration::from_millis((at - now_ms()).clamp(0, TICK.as_millis() as i64) as u64)
            })
            .unwrap_or(TICK);
        tokio::select! {
            _ = waker().notified() => {}
            _ = tokio::time::sleep(next) => {}
        }
    }
}

async fn imports(store: &Store, bus: &Bus, outbox_wake: &Notify, turns_wake: &Notify) {
    let jobs = match store.call(store::approved_imports).await {
        Ok(j) => j,
        Err(e) => return tracing::error!(error = %e, "cannot read approved imports"),
    };
    for job in jobs {
        let r = bus
            .import_file(&job.source_chat, &job.path, &job.dest_chat)
            .await;
        let j = job.clone();
        let stored = match r {
            Ok((dest, sha, size)) => {
                store
                    .call(move |t| store::import_copied(t, &j, &dest, &sha, size))
                    .await
            }
            Err(BusError::Unavailable(e)) => {
                tracing::warn!(disclosure = job.id, error = %e, "the helper is unavailable; the import waits");
                continue;
            }
            Err(e) => {
                let why = e.to_string();
                store
                    .call(move |t| store::import_failed(t, j.id, &why))
                    .await
            }
        };
        if let Err(e) = stored {
            tracing::error!(disclosure = job.id, error = %e, "cannot record the import");
        }
        outbox_wake.notify_one();
        turns_wake.notify_one();
    }
}
