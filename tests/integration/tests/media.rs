//! Media in (issue 10): a person's photo or file arrives as a Linq media part with an expiring
//! URL; the gateway fetches it when the message's turn starts, only from Linq's media origins
//! (`[linq] media_hosts`) and only up to `[linq] media_max_bytes`, and the helper writes it into
//! the chat's `inbox/<date>-<name>` as the chat's user, 0600. The prompt says what arrived where.

use std::time::Duration;

use picortex_integration::{chat_tag, json, Machine};

const OWNER: &str = "+15550002000";
const T: Duration = Duration::from_secs(60);
/// A 1×1 PNG.
const PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

/// Done-when 2: a photo texted to the bot lands in the chat's inbox and the real CLI's turn reads
/// it — its Read tool sends the image itself back to the API, so the model can look at it.
#[test]
fn a_photo_lands_in_the_inbox_and_the_real_cli_looks_at_it() {
    let m = Machine::boot();
    std::fs::write(
        m.path("/etc/picortex/credentials/anthropic-api-key"),
        "sk-ant-media",
    )
    .unwrap();
    m.ok("chmod 600 /etc/picortex/credentials/anthropic-api-key");
    m.use_real_cli("");
    m.set_config("turns", "permission_mode", "\"bypassPermissions\"");
    m.start_picortex();
    m.api_script(json!([{"match": "what is this", "steps": [
        {"tool_use": {"name": "Bash", "input": {
            "command": "stat -c '%a %U %s %n' inbox inbox/*", "description": "look"}}},
        {"tool_use": {"name": "Read", "input": {"file_path": "{inbox_path}"}}},
        {"text": "I see {inbox_path}"}]}]));
    let sim = m.sim();
    let r = sim.post(
        "/control/inbound",
        json!({"from": OWNER, "text": "what is this?", "media": [
            {"filename": "cat photo.png", "mime_type": "image/png", "content_b64": PNG_B64, "ttl_s": 120}]}),
    );
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    let reply = m.wait_reply_containing(&chat, "I see inbox/", T);
    let text = reply["text"].as_str().unwrap().to_owned();
    let rel = text.trim_start_matches("I see ").trim().to_owned();
    assert!(
        rel.starts_with("inbox/20") && rel.ends_with("-cat_photo.png"),
        "{rel}"
    );

    // The file, as the host sees it: the chat user's, 0600, the bytes that were sent.
    let home = format!("/var/lib/picortex/chats/{}", chat_tag(&chat));
    let user = format!("chat-{}", chat_tag(&chat));
    let st = m.ok(&format!("stat -c '%a %U' {home}/inbox {home}/{rel}"));
    assert_eq!(st, format!("700 {user}\n600 {user}\n"));
    let b64 = m.ok(&format!("base64 -w0 {home}/{rel}"));
    assert_eq!(b64.trim(), PNG_B64);
    assert_eq!(
        m.sql(&format!(
            "SELECT status || ' ' || rel_path FROM media WHERE message_id = (SELECT id FROM messages WHERE linq_id = '{}')",
            r["message_id"].as_str().unwrap()
        )),
        format!("stored {rel}")
    );

    // The API saw the prompt name the file, the tool see it as the chat's, and the image itself.
    let reqs: Vec<_> = m
        .api_requests()
        .into_iter()
        .filter(|q| q["body"]["messages"].to_string().contains("what is this"))
        .collect();
    let first = reqs.first().expect("a request").to_string();
    assert!(
        first.contains(&rel),
        "the prompt does not say where the photo is"
    );
    assert!(
        first.contains("image/png"),
        "the prompt does not say what arrived"
    );
    let last = reqs.last().unwrap();
    let results = picortex_integration::api_tool_results(last);
    assert!(
        results
            .first()
            .is_some_and(|r| r.contains(&format!("600 {user}")) && r.contains("700 ")),
        "{results:?}"
    );
    let msgs = last["body"]["messages"].to_string();
    let compact: String = PNG_B64.chars().take(40).collect();
    assert!(
        msgs.contains("\"type\": \"image\"") || msgs.contains("\"type\":\"image\""),
        "the Read tool did not return the image"
    );
    assert!(msgs.contains(&compact), "the image is not the photo sent");
}

/// Done-when 3: the media path refuses a URL to a non-Linq host, an oversized download (whatever
/// size the part announced) and an expired link; nothing is written, and the agent is told why.
#[test]
fn media_from_elsewhere_oversized_or_expired_is_refused() {
    let m = Machine::boot();
    m.set_config("linq", "media_max_bytes", "1048576");
    m.start_picortex();
    let sim = m.sim();
    let r = sim.post(
        "/control/inbound",
        json!({"from": OWNER, "text": "three files", "media": [
            {"filename": "a.jpg", "mime_type": "image/jpeg", "size": 10, "url": "http://198.51.100.1/a.jpg"},
            {"filename": "big.mov", "mime_type": "video/quicktime", "size": 2_097_152, "announced_size": 1000},
            {"filename": "old.pdf", "mime_type": "application/pdf", "size": 100, "ttl_s": -5},
            {"filename": "ok.txt", "mime_type": "text/plain", "content_b64": "aGVsbG8K"}]}),
    );
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    m.wait_replies(&chat, 1, T);
    m.wait_settled(T);
    let rows = m.sql(&format!(
        "SELECT filename || ' ' || status || ' ' || COALESCE(error, '') FROM media WHERE message_id = (SELECT id FROM messages WHERE linq_id = '{}') ORDER BY part_index",
        r["message_id"].as_str().unwrap()
    ));
    let rows: Vec<&str> = rows.lines().collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(
        rows[0].starts_with("a.jpg refused") && rows[0].contains("media hosts"),
        "{rows:?}"
    );
    assert!(
        rows[1].starts_with("big.mov refused") && rows[1].contains("limit"),
        "{rows:?}"
    );
    assert!(
        rows[2].starts_with("old.pdf failed") && rows[2].contains("403"),
        "{rows:?}"
    );
    assert!(rows[3].starts_with("ok.txt stored"), "{rows:?}");
    let home = format!("/var/lib/picortex/chats/{}", chat_tag(&chat));
    let files = m.ok(&format!("ls {home}/inbox"));
    let files: Vec<&str> = files.lines().collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with("-ok.txt"), "{files:?}");
    // The stand-in agent quotes its prompt: the person's words and what happened to each file.
    let reply = sim.sent(&chat)[0]["text"].as_str().unwrap().to_owned();
    assert!(
        reply.contains("a.jpg (image/jpeg): could not be saved"),
        "{reply}"
    );
    assert!(
        reply.contains("big.mov (video/quicktime): could not be saved"),
        "{reply}"
    );
    assert!(
        reply.contains("ok.txt (text/plain, 6 bytes): saved in your working directory as inbox/"),
        "{reply}"
    );
}

/// The media messages the bot sent in `chat`: (filename, reply_to, url).
fn files_sent(m: &Machine, chat: &str) -> Vec<(String, String, String)> {
    m.sim()
        .sent(chat)
        .iter()
        .flat_map(|msg| {
            let reply_to = msg["reply_to"].as_str().unwrap_or("").to_owned();
            msg["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p["type"] == "media")
                .map(move |p| {
                    (
                        p["filename"].as_str().unwrap_or("").to_owned(),
                        reply_to.clone(),
                        p["url"].as_str().unwrap_or("").to_owned(),
                    )
                })
        })
        .collect()
}

fn boot_outbox_machine() -> Machine {
    let m = Machine::boot();
    std::fs::write(
        m.path("/etc/picortex/credentials/anthropic-api-key"),
        "sk-ant-media",
    )
    .unwrap();
    m.ok("chmod 600 /etc/picortex/credentials/anthropic-api-key");
    m.use_real_cli("");
    m.set_config("turns", "permission_mode", "\"bypassPermissions\"");
    m
}

const MAKE_FILES: &str = "mkdir -p outbox && printf 'quarterly numbers\\n' > outbox/report.txt \
    && ln -s /etc/hostname outbox/host.txt && printf 'MZ' > outbox/tool.exe && echo made";

/// Done-when 2 and 3 (media out): a file the real CLI leaves in `outbox/` reaches the chat as an
/// uploaded attachment in the thread, once; a symlink and a type Linq rejects are not sent (and
/// not followed); the sent file leaves `outbox/`.
#[test]
fn a_file_the_agent_leaves_in_outbox_is_sent_once_in_the_thread() {
    let m = boot_outbox_machine();
    m.start_picortex();
    m.api_script(json!([{"match": "send me the report", "steps": [
        {"tool_use": {"name": "Bash", "input": {"command": MAKE_FILES, "description": "files"}}},
        {"text": "here it is"}]}]));
    let sim = m.sim();
    let r = sim.text(OWNER, None, "send me the report");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    let asked = r["message_id"].as_str().unwrap().to_owned();
    m.wait_reply_containing(&chat, "here it is", T);
    let sent = m.wait_for("the report at the simulator", T, || {
        let f = files_sent(&m, &chat);
        (!f.is_empty()).then_some(f)
    });
    m.wait_settled(T);
    // Another turn: nothing is sent again.
    sim.text(OWNER, Some(&chat), "thanks");
    m.wait_reply_containing(&chat, "thanks", T);
    m.wait_settled(T);
    let sent_after = files_sent(&m, &chat);
    assert_eq!(sent_after, sent, "sent again");
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (name, reply_to, url) = &sent[0];
    assert_eq!(name, "report.txt");
    assert_eq!(reply_to, &asked, "not in the thread");
    assert_eq!(m.ok(&format!("curl -sf '{url}'")), "quarterly numbers\n");
    let upload = sim.calls("/api/partner/v3/attachments", "POST");
    assert_eq!(upload.len(), 1, "{upload:?}");
    let home = format!("/var/lib/picortex/chats/{}", chat_tag(&chat));
    let left = m.ok(&format!("ls -A {home}/outbox"));
    let mut left: Vec<&str> = left.lines().collect();
    left.sort();
    assert_eq!(
        left,
        ["host.txt", "tool.exe"],
        "the refused entries stay, the sent one is gone"
    );
    let audit = m.journal("");
    assert!(
        audit.contains("outbox/host.txt not sent: a symlink"),
        "no refusal logged"
    );
    assert!(audit.contains("outbox/tool.exe not sent: a type Linq does not take"));
}

/// Exactly once across a crash: the gateway is killed after recording the file and before the
/// helper removes it from `outbox/`; after the restart it is sent once, and the next turn finds
/// it recorded and only removes it.
#[test]
fn a_gateway_killed_between_recording_and_clearing_sends_the_file_once() {
    let m = boot_outbox_machine();
    m.arm_failpoint("media-out-recorded");
    m.start_picortex();
    m.api_script(json!([{"match": "send me the report", "steps": [
        {"tool_use": {"name": "Bash", "input": {"command": MAKE_FILES, "description": "files"}}},
        {"text": "here it is"}]}]));
    let sim = m.sim();
    let r = sim.text(OWNER, None, "send me the report");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    m.wait_for("the crash point", T, || m.failpoint_fired().then_some(()));
    let home = format!("/var/lib/picortex/chats/{}", chat_tag(&chat));
    assert_eq!(
        m.sh(&format!("test -f {home}/outbox/report.txt")).code,
        0,
        "cleared before the crash point"
    );
    m.wait_for("the report at the simulator", T, || {
        (!files_sent(&m, &chat).is_empty()).then_some(())
    });
    m.wait_settled(T);
    sim.text(OWNER, Some(&chat), "and again?");
    m.wait_reply_containing(&chat, "and again?", T);
    m.wait_settled(T);
    std::thread::sleep(Duration::from_secs(1));
    let sent = files_sent(&m, &chat);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        m.sh(&format!("test -e {home}/outbox/report.txt")).code,
        1,
        "the recorded file was not removed by the next collection"
    );
}
