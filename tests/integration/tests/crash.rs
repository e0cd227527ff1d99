//! Issue "The Linq channel, complete and lossless" (done-when 2): `kill -9` of picortexd at every
//! point of a message's life — while receiving, after storing, around and during the turn, before
//! and during sending — and a restart (Restart=on-failure, or the socket on the next connection)
//! must end with every inbound message answered exactly once, in its thread, with the stand-in's
//! answer to that very message. Checked against the simulator's record of what the bot sent, and
//! against the gateway's own log (one turn per message, every turn done, every reply sent, every
//! turn unit released).
//!
//! Each point gets one machine and several crashes in sequence. The crash points compiled into
//! picortexd (picortexd/src/failpoint.rs) are armed with a drop-in; "during the turn" and "during
//! sending" are also done with a real `systemctl kill -s KILL` at a moment the test picks.

use std::time::Duration;

use picortex_integration::{json, tally_replies, Expected, Machine};

const OWNER: &str = "+15550002000";
const FRIEND: &str = "+15550003000";
/// Crashes per point.
const ROUNDS: usize = 3;
const T: Duration = Duration::from_secs(45);

struct Rig {
    m: Machine,
    expected: Vec<Expected>,
    /// The owner's and the friend's 1:1 chats, once the simulator made them.
    chats: [Option<String>; 2],
}

fn rig(point: Option<&str>) -> Rig {
    let m = Machine::boot();
    if let Some(p) = point {
        m.arm_failpoint(p);
    }
    // The matrix checks that no turn unit is left over, so every turn starts afresh here;
    // the spare-unit handoff has its crash test in spares.rs.
    m.without_spares();
    m.start_picortex();
    // The simulator retries an undelivered webhook after 100 ms, doubling: a crash costs ~1 s.
    m.sim().config(json!({ "retry_base_ms": 100 }));
    Rig {
        m,
        expected: Vec::new(),
        chats: [None, None],
    }
}

/// How many times picortexd died of SIGKILL, and whether it is serving again since the last time.
fn kills(m: &Machine) -> (usize, bool) {
    let j = m.journal("-u picortexd.service | grep -E 'status=9/KILL|picortexd .* ready$' || true");
    let lines: Vec<&str> = j.lines().collect();
    let n = lines.iter().filter(|l| l.contains("status=9/KILL")).count();
    (n, lines.last().is_some_and(|l| l.ends_with("ready")))
}

impl Rig {
    /// Person `who` (0 the owner, 1 a friend) writes `text` in their 1:1 chat with the bot.
    fn text(&mut self, who: usize, text: &str) {
        let v = self
            .m
            .sim()
            .text([OWNER, FRIEND][who], self.chats[who].as_deref(), text);
        let chat = v["chat_id"].as_str().expect("chat_id").to_owned();
        self.chats[who] = Some(chat.clone());
        self.expected.push(Expected {
            chat_id: chat,
            message_id: v["message_id"].as_str().expect("message_id").to_owned(),
            text: text.to_owned(),
        });
    }

    /// Wait for the `n`th SIGKILL of picortexd and for it to serve again.
    fn wait_killed_and_back(&self, n: usize) {
        self.m.wait_for(
            &format!("picortexd killed {n} times and serving again"),
            T,
            || {
                let (k, up) = kills(&self.m);
                assert!(k <= n, "picortexd was killed {k} times, expected {n}");
                (k == n && up).then_some(())
            },
        );
    }

    /// Wait until every message so far has at least one answer.
    fn wait_answered(&self) {
        let sim = self.m.sim();
        self.m.wait_for(
            &format!("answers to all {} messages", self.expected.len()),
            T,
            || (tally_replies(&sim, &self.expected).lost == 0).then_some(()),
        );
    }

    /// Wait until nothing is in flight: no webhook left to retry, no turn unfinished, no reply
    /// unsent. Then the next thing to reach an armed crash point is the next message's.
    fn settle(&self) {
        if self.expected.is_empty() {
            return self.m.wait_deliveries_settled(T);
        }
        self.m.wait_for("the gateway idle", T, || {
            let busy = self.m.sql_n(
                "SELECT (SELECT COUNT(*) FROM turns WHERE status != 'done') + (SELECT COUNT(*) FROM outbox WHERE status = 'pending')",
            );
            (busy == 0).then_some(())
        });
        // Linq echoes each reply (message.sent, then message.delivered) a few ms after it
        // accepted it; those webhooks must be through too.
        let sim = self.m.sim();
        self.m.wait_for("every reply delivered", T, || {
            let all = self.chats.iter().flatten().all(|c| {
                sim.sent(c)
                    .iter()
                    .all(|s| s["delivery_status"] == "delivered")
            });
            all.then_some(())
        });
        self.m.wait_settled(T);
    }

    /// The verdict: exactly once, checked on the simulator's side and in the gateway's log.
    fn verdict(&self, point: &str, crashes: usize) {
        std::thread::sleep(Duration::from_secs(1)); // room for a late duplicate to show up
        let t = tally_replies(&self.m.sim(), &self.expected);
        eprintln!(
            "CRASH-MATRIX point={point} crashes={crashes} messages={} lost={} duplicated={} wrong={}",
            t.messages,
            t.lost,
            t.duplicated,
            t.wrong.len()
        );
        assert!(t.clean(), "{point}: {t:?}");
        assert_eq!(
            kills(&self.m).0,
            crashes,
            "{point}: picortexd was not killed as often as planned"
        );
        let n = self.expected.len() as i64;
        let m = &self.m;
        assert_eq!(
            m.sql_n("SELECT COUNT(*) FROM turns"),
            n,
            "{point}: not one turn per message"
        );
        assert_eq!(
            m.sql("SELECT status, outcome, COUNT(*) FROM turns GROUP BY 1, 2"),
            format!("done|ok|{n}"),
            "{point}: turns"
        );
        assert_eq!(
            m.sql("SELECT status, COUNT(*) FROM outbox GROUP BY 1"),
            format!("sent|{n}"),
            "{point}: outbox"
        );
        assert_eq!(
            m.sql_n("SELECT COUNT(DISTINCT linq_message_id) FROM outbox"),
            n,
            "{point}: two outbox rows recorded the same Linq message"
        );
        // …and the ids recorded are the messages Linq has (a replayed key answers the original).
        let mut recorded: Vec<String> = m
            .sql("SELECT linq_message_id FROM outbox")
            .lines()
            .map(str::to_owned)
            .collect();
        let sim = m.sim();
        let mut on_linq: Vec<String> = self
            .chats
            .iter()
            .flatten()
            .flat_map(|c| sim.sent(c))
            .map(|s| s["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        recorded.sort();
        on_linq.sort();
        assert_eq!(
            recorded, on_linq,
            "{point}: the outbox recorded ids Linq does not have"
        );
        // The log knows each reply as the bot's, even when Linq's echo of it (message.sent)
        // reached the gateway before the gateway had recorded the send.
        assert_eq!(
            m.sql("SELECT direction, COUNT(*) FROM messages GROUP BY 1 ORDER BY 1"),
            format!("inbound|{n}\noutbound|{n}"),
            "{point}: messages in the log"
        );
        // Every turn unit released and every result file collected, crash or not.
        m.wait_for("every turn unit released", Duration::from_secs(10), || {
            m.loaded_turn_units().is_empty().then_some(())
        });
        let left = m.ok("ls -A /var/lib/picortex/turns");
        assert!(
            left.trim().is_empty(),
            "{point}: result files left behind: {left}"
        );
    }
}

/// One armed crash point, hit `ROUNDS` times; each round two people write (two chats), so a
/// crash also meets the other chat's message somewhere in its life.
fn crash_point(point: &str) -> Rig {
    let mut r = rig(Some(point));
    for round in 1..=ROUNDS {
        r.settle();
        r.m.rearm_failpoint();
        r.text(0, &format!("{point} round {round} from the owner"));
        r.text(1, &format!("{point} round {round} from a friend"));
        r.m.wait_for(&format!("crash point {point} to fire"), T, || {
            r.m.failpoint_fired().then_some(())
        });
        r.wait_killed_and_back(round);
        r.wait_answered();
    }
    r.verdict(point, ROUNDS);
    r
}

#[test]
fn killed_after_the_body_is_read_before_it_is_stored() {
    let point = "webhook-received";
    let mut r = rig(Some(point));
    for round in 1..=ROUNDS + 1 {
        r.settle();
        if round == ROUNDS + 1 {
            // Once more with no Restart=: only the simulator's redelivery, through the socket,
            // brings the gateway back.
            r.m.gateway_dropin("60-no-restart", "Restart=no");
        }
        r.m.rearm_failpoint();
        let first = r.m.sim().text(
            OWNER,
            r.chats[0].as_deref(),
            &format!("{point} round {round}"),
        );
        assert!(
            first["status"].is_null(),
            "the first delivery should have been cut by the crash: {first}"
        );
        r.chats[0] = first["chat_id"].as_str().map(str::to_owned);
        r.expected.push(Expected {
            chat_id: r.chats[0].clone().unwrap(),
            message_id: first["message_id"].as_str().unwrap().to_owned(),
            text: format!("{point} round {round}"),
        });
        r.text(1, &format!("{point} round {round} from a friend"));
        r.wait_killed_and_back(round);
        r.wait_answered();
    }
    let by_systemd =
        r.m.journal("-u picortexd.service | grep -c 'Scheduled restart job' || true");
    assert_eq!(
        by_systemd.trim(),
        ROUNDS.to_string(),
        "the last restart was not the socket's"
    );
    r.verdict("webhook-received", ROUNDS + 1);
}

#[test]
fn killed_after_storing_before_answering_the_webhook() {
    crash_point("webhook-stored");
}

#[test]
fn killed_after_the_turn_is_marked_starting_before_its_unit_exists() {
    crash_point("turn-before-start");
}

#[test]
fn killed_right_after_the_turn_unit_started() {
    crash_point("turn-started");
}

#[test]
fn killed_after_the_unit_ended_before_the_result_is_recorded() {
    crash_point("turn-ended");
}

#[test]
fn killed_after_the_result_is_recorded_before_the_unit_is_released() {
    crash_point("turn-recorded");
}

#[test]
fn killed_before_the_reply_is_sent() {
    crash_point("reply-before-send");
}

#[test]
fn killed_after_linq_accepted_the_reply_before_it_is_recorded() {
    let r = crash_point("reply-sent");
    // Each crash came after Linq accepted a reply: the outbox sent it again after the restart
    // under the same idempotency key, and the simulator answered with the original message
    // (200, not 202) and sent nothing new.
    let replays: Vec<_> =
        r.m.sim()
            .calls("/v3/chats/", "POST")
            .into_iter()
            .filter(|c| {
                c["path"].as_str().is_some_and(|p| p.ends_with("/messages")) && c["status"] == 200
            })
            .collect();
    assert!(
        replays.len() >= ROUNDS,
        "expected a replayed send per crash, got {}",
        replays.len()
    );
}

/// A real `kill -9` while a 3-second turn runs in its unit, with a second message of the same
/// chat queued behind it (T5): the unit finishes without the gateway, and both are answered, in
/// order, after the restart.
#[test]
fn killed_during_the_turn() {
    let mut r = rig(None);
    for round in 1..=ROUNDS {
        r.settle();
        r.text(0, &format!("#sleep=3 a long one, round {round}"));
        // The long turn itself, running in its unit: not any turn unit (a spare waits in one;
        // one whose sandbox went stale hands its turn back and ends).
        let long_unit = || {
            let unit = r.m.sql(&format!(
                "SELECT t.unit FROM turns t JOIN messages m ON m.id = t.message_id \
                 WHERE m.text LIKE '%a long one, round {round}' AND t.status = 'running'"
            ));
            let unit = unit.trim().to_owned();
            (!unit.is_empty()
                && r.m
                    .sh(&format!("systemctl is-active --quiet '{unit}'"))
                    .code
                    == 0)
                .then_some(unit)
        };
        let unit =
            r.m.wait_for("the long turn running in its unit", T, long_unit);
        r.text(0, &format!("queued behind the long one, round {round}"));
        r.text(1, &format!("another chat, round {round}"));
        assert!(
            r.m.sh(&format!("systemctl is-active --quiet '{unit}'"))
                .code
                == 0,
            "the long turn ended before the kill"
        );
        r.m.ok("systemctl kill -s KILL picortexd.service");
        r.wait_killed_and_back(round);
        r.wait_answered();
    }
    r.verdict("turn (real kill -9)", ROUNDS);
}

/// A real `kill -9` while the reply's POST is in flight (the simulator holds every API call for
/// 1.5 s): after the restart the outbox sends it again under the same idempotency key.
#[test]
fn killed_while_sending() {
    let mut r = rig(None);
    let sim = r.m.sim();
    for round in 1..=ROUNDS {
        r.settle();
        let before = if r.expected.is_empty() {
            0
        } else {
            r.m.sql_n("SELECT COUNT(*) FROM outbox")
        };
        sim.faults(json!({ "api_delay_ms": 1500 }));
        r.text(0, &format!("send me slowly, round {round}"));
        // The turn is recorded and its reply queued; the outbox posts it at once.
        r.m.wait_for("the reply queued", T, || {
            (r.m.sql_n("SELECT COUNT(*) FROM outbox") > before).then_some(())
        });
        std::thread::sleep(Duration::from_millis(500));
        let pending =
            r.m.sql_n("SELECT COUNT(*) FROM outbox WHERE status = 'pending'");
        assert_eq!(pending, 1, "the reply was not in flight at the kill");
        r.m.ok("systemctl kill -s KILL picortexd.service");
        sim.faults(json!({ "api_delay_ms": 0 }));
        r.wait_killed_and_back(round);
        r.wait_answered();
    }
    let posts: Vec<_> = sim
        .calls("/v3/chats/", "POST")
        .into_iter()
        .filter(|c| c["path"].as_str().is_some_and(|p| p.ends_with("/messages")))
        .collect();
    let replays = posts.iter().filter(|c| c["status"] == 200).count();
    eprintln!(
        "killed_while_sending: {} send calls answered, {replays} of them replays of an earlier key",
        posts.len()
    );
    r.verdict("sending (real kill -9)", ROUNDS);
}
