//! The outbox sender (SPEC L4): replies are written to the `outbox` table in the same transaction
//! that records the turn, and this loop sends them. Each part carries a stable Linq
//! `idempotency_key`, so a part re-sent after a crash between "Linq accepted" and "we recorded it"
//! is not delivered twice. Parts of one chat go out in order; chats are sent concurrently.
//! Retryable failures (429 with its Retry-After, 5xx, network) back off; other 4xx give up at once.
//! Linq's 30-messages-per-60-seconds per-pair limit is kept locally so we rarely meet its 429.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::Notify;

use crate::linq::client::{backoff, LinqClient};
use crate::store::authority;
use crate::store::queries::{self, Outgoing};
use crate::store::{now_ms, Store};

const PAIR_LIMIT: usize = 30;
const PAIR_WINDOW: Duration = Duration::from_secs(60);
/// After this many attempts a retryable failure is given up on (about an hour of backoff).
const MAX_ATTEMPTS: u32 = 70;

pub struct Outbox {
    store: Store,
    linq: Arc<LinqClient>,
    wake: Arc<Notify>,
    pairs: Mutex<PairLimiter>,
}

/// Linq's per-pair limit, kept on our side: at most `limit` sends per `window` per chat.
#[derive(Debug, Default)]
pub struct PairLimiter {
    sent: HashMap<String, VecDeque<Instant>>,
}

impl PairLimiter {
    /// How long until `chat` may send again at `now` (zero: now).
    pub fn wait(&mut self, chat: &str, now: Instant) -> Duration {
        let q = self.sent.entry(chat.to_owned()).or_default();
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= PAIR_WINDOW)
        {
            q.pop_front();
        }
        if q.len() < PAIR_LIMIT {
            Duration::ZERO
        } else {
            q.front()
                .map(|t| PAIR_WINDOW.saturating_sub(now.duration_since(*t)))
                .unwrap_or_default()
        }
    }

    pub fn note(&mut self, chat: &str, now: Instant) {
        self.sent.entry(chat.to_owned()).or_default().push_back(now);
    }
}

impl Outbox {
    pub fn new(store: Store, linq: Arc<LinqClient>, wake: Arc<Notify>) -> Self {
        Self {
            store,
            linq,
            wake,
            pairs: Mutex::new(PairLimiter::default()),
        }
    }

    pub async fn run(self: Arc<Self>) {
        loop {
            let due = match self
                .store
                .call(|t| queries::due_outbox(t, now_ms(), 64))
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox");
                    Vec::new()
                }
            };
            let n = due.len();
            join_all(due.into_iter().map(|o| self.send(o))).await;
            if n > 0 {
                continue; // a chat's next part may be due right away
            }
            let next = self
                .store
                .call(queries::next_outbox_due)
                .await
                .ok()
                .flatten();
            let sleep = match next {
                Some(at) => Duration::from_millis((at - now_ms()).clamp(10, 30_000) as u64),
                None => Duration::from_secs(30),
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    fn pair_wait(&self, chat: &str) -> Duration {
        self.pairs
            .lock()
            .map(|mut p| p.wait(chat, Instant::now()))
            .unwrap_or_default()
    }

    fn note_sent(&self, chat: &str) {
        if let Ok(mut p) = self.pairs.lock() {
            p.note(chat, Instant::now());
        }
    }

    async fn send(&self, o: Outgoing) {
        let span = tracing::info_span!("outbox", chat = %o.chat_id, turn = o.turn_id.as_deref().unwrap_or(""), outbox_id = o.id);
        let _g = span.enter();
        let wait = self.pair_wait(&o.chat_id);
        if !wait.is_zero() {
            tracing::info!(
                wait_ms = wait.as_millis() as u64,
                "holding reply: 30 messages per minute to this chat already"
            );
            let (id, at) = (o.id, now_ms() + wait.as_millis() as i64);
            // Not an attempt: just move its due time.
            let _ = self
                .store
                .call(move |t| {
                    t.execute(
                        "UPDATE outbox SET next_attempt_at = ?2 WHERE id = ?1",
                        rusqlite::params![id, at],
                    )?;
                    Ok(())
                })
                .await;
            return;
        }
        drop(_g);
        crate::failpoint::hit("reply-before-send");
        let mut o = o;
        if let Some((to, from)) = o.open_dm.clone() {
            // A message to a handle with no chat yet (the owner's first notice): use the chat if
            // one appeared meanwhile, else open it — the idempotency key makes that happen once.
            let h = to.clone();
            match self
                .store
                .call(move |t| queries::direct_chat_with(t, &h))
                .await
            {
                Ok(Some(chat)) => {
                    o.chat_id = chat;
                    o.open_dm = None;
                }
                Ok(None) => return self.open_dm(o, &to, &from).await,
                Err(e) => return tracing::error!(error = %e, "cannot read the log"),
            }
        }
        let r = match &o.file {
            // A file the agent left in outbox/ (picortexd/src/media/out.rs), spooled.
            Some(f) => match std::fs::read(&f.path) {
                Ok(bytes) => {
                    self.linq
                        .send_file(
                            &o.chat_id,
                            &bytes,
                            &f.name,
                            &f.mime,
                            o.reply_to.as_deref(),
                            &o.idempotency_key,
                        )
                        .await
                }
                Err(e) => Err(crate::linq::client::LinqError::Invalid(format!(
                    "spooled file {}: {e}",
                    f.path
                ))),
            },
            None => {
                self.linq
                    .send_message(
                        &o.chat_id,
                        &o.text,
                        o.reply_to.as_deref(),
                        &o.idempotency_key,
                    )
                    .await
            }
        };
        let _g = span.enter();
        match r {
            Ok(sent) => {
                crate::failpoint::hit("reply-sent");
                self.note_sent(&o.chat_id);
                tracing::info!(linq_message = %sent.message_id, attempts = o.attempts + 1, "reply sent");
                let (oo, mid) = (o.clone(), sent.message_id.clone());
                match self
                    .store
                    .call(move |t| queries::outbox_sent(t, &oo, &mid))
                    .await
                {
                    // A sent file's spooled copy is no longer needed.
                    Ok(()) => {
                        if let Some(f) = &o.file {
                            let _ = std::fs::remove_file(&f.path);
                        }
                    }
                    // Linq has it; the idempotency key makes the re-send after restart harmless.
                    Err(e) => tracing::error!(error = %e, "reply sent but not recorded"),
                }
            }
            Err(e) => {
                drop(_g);
                self.failed(&o, e).await
            }
        }
        self.wake.notify_one();
    }

    /// Send `o` as the first message of a new 1:1 chat with `to`, and record the chat.
    async fn open_dm(&self, o: Outgoing, to: &str, from: &str) {
        let r = self
            .linq
            .create_chat(from, to, &o.text, &o.idempotency_key)
            .await;
        match r {
            Ok(sent) => {
                tracing::info!(chat = %sent.chat_id, linq_message = %sent.message_id, "opened a 1:1 chat with the owner");
                let (oo, mid, chat, to, from) = (
                    o.clone(),
                    sent.message_id.clone(),
                    sent.chat_id.clone(),
                    to.to_owned(),
                    from.to_owned(),
                );
                let r = self
                    .store
                    .call(move |t| {
                        authority::owner_dm_opened(t, &chat, &to, &from)?;
                        let sent = Outgoing {
                            chat_id: chat.clone(),
                            open_dm: None,
                            ..oo
                        };
                        t.execute(
                            "UPDATE outbox SET chat_id = ?2 WHERE id = ?1",
                            rusqlite::params![sent.id, chat],
                        )?;
                        queries::outbox_sent(t, &sent, &mid)
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "owner's chat opened but not recorded; the idempotency key makes the retry harmless");
                }
            }
            Err(e) => self.failed(&o, e).await,
        }
        self.wake.notify_one();
    }

    /// A send that Linq did not take: retry later, or give up on what it will never accept.
    async fn failed(&self, o: &Outgoing, e: crate::linq::client::LinqError) {
        if e.is_retryable() && o.attempts + 1 < MAX_ATTEMPTS {
            let delay = backoff(o.attempts, e.retry_after());
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, attempts = o.attempts + 1, "message not sent; will retry");
            let (id, at, msg) = (o.id, now_ms() + delay.as_millis() as i64, e.to_string());
            let _ = self
                .store
                .call(move |t| queries::outbox_retry(t, id, at, &msg))
                .await;
        } else {
            tracing::error!(error = %e, attempts = o.attempts + 1, "message given up: Linq will not accept it");
            let (id, msg) = (o.id, e.to_string());
            let _ = self
                .store
                .call(move |t| queries::outbox_failed(t, id, &msg))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_per_minute_per_chat() {
        let mut p = PairLimiter::default();
        let t0 = Instant::now();
        for i in 0..30 {
            assert_eq!(
                p.wait("a", t0 + Duration::from_secs(i)),
                Duration::ZERO,
                "send {i} held"
            );
            p.note("a", t0 + Duration::from_secs(i));
        }
        // The 31st waits until the first leaves the window; other chats are not held.
        assert_eq!(
            p.wait("a", t0 + Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(p.wait("b", t0 + Duration::from_secs(30)), Duration::ZERO);
        assert_eq!(p.wait("a", t0 + Duration::from_secs(60)), Duration::ZERO);
    }
}
