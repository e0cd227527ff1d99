//! The real Claude Code CLI (pinned, installed by `make stage`) through the real path: webhook →
//! gateway → turn unit → picortex-run → `claude -p`, against the Messages API stand-in
//! (tests/anthropic-standin) on a test host at 198.51.100.1 that the turn reaches through its
//! real egress fence. Each test checks a claim of research/claude-cli.md that picortex relies on.
//! These tests fail, never skip, when the CLI is missing.

use std::time::Duration;

use picortex_integration::{api_tool_results, chat_tag, json, Machine};
use serde_json::Value;

const KEY: &str = "sk-ant-api03-realcli-5e1f0c9a7b3d2468";
const OWNER: &str = "+15550002000";
const T: Duration = Duration::from_secs(60);

fn boot_real(extra_env: &str) -> Machine {
    let m = Machine::boot();
    std::fs::write(m.path("/etc/picortex/credentials/anthropic-api-key"), KEY).unwrap();
    m.ok("chmod 600 /etc/picortex/credentials/anthropic-api-key");
    m.use_real_cli(extra_env);
    m
}

/// The Messages API requests whose conversation carries `marker` in a prompt.
fn requests_with(m: &Machine, marker: &str) -> Vec<Value> {
    m.api_requests()
        .into_iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/v1/messages"))
        })
        .filter(|r| r["body"]["messages"].to_string().contains(marker))
        .collect()
}

/// claude-cli.md §2 (`--session-id` on the first turn, `--resume` after; transcripts in
/// `$CLAUDE_CONFIG_DIR/projects`) and §4 (`apiKeyHelper`): the conversation continues across
/// turns and across a restart of the gateway, and the API sees the key on every request.
#[test]
fn a_session_continues_across_turns_and_a_gateway_restart() {
    let m = boot_real("");
    m.without_spares();
    m.start_picortex();
    let mut chat = None;
    let a = m.exchange(OWNER, &mut chat, "first words");
    assert!(a.contains("standin-api: turn 1;"), "{a}");
    let chat = chat.unwrap();
    let b = m.exchange(OWNER, &mut Some(chat.clone()), "second words");
    assert!(b.contains("standin-api: turn 2;"), "not resumed: {b}");

    let before = m.gateway_invocation();
    m.ok("systemctl restart picortexd.service");
    m.wait_gateway_restarted(&before, T);
    let c = m.exchange(OWNER, &mut Some(chat.clone()), "third words");
    assert!(
        c.contains("standin-api: turn 3;"),
        "not resumed after restart: {c}"
    );

    // The third turn sent the whole conversation: both earlier prompts are in it.
    let last = requests_with(&m, "third words").pop().expect("a request");
    let conv = last["body"]["messages"].to_string();
    assert!(
        conv.contains("first words") && conv.contains("second words"),
        "{conv}"
    );
    // One session id throughout: the first turn created it, the others resumed it.
    let journal = m.journal("-t picortex-turn -t picortex-run");
    let tag = chat_tag(&chat);
    let home = format!("/var/lib/picortex/chats/{tag}");
    let transcripts = m.ok(&format!(
        "find {home}/.claude/projects -name '*.jsonl' | wc -l"
    ));
    assert_eq!(
        transcripts.trim(),
        "1",
        "one transcript for the chat\n{journal}"
    );
    // apiKeyHelper: every model request carried the key from the turn's credential.
    let all = m.api_requests();
    assert!(!all.is_empty());
    for r in &all {
        assert_eq!(r["headers"]["x-api-key"], KEY, "{}", r["headers"]);
    }
    m.wait_settled(T);
    let turns = m.sql_n(&format!(
        "SELECT COUNT(*) FROM turns WHERE chat_id = '{chat}' AND outcome = 'ok'"
    ));
    assert_eq!(turns, 3);
}

/// claude-cli.md §4 (apiKeyHelper) and README "The agent's credential": while a real turn runs,
/// the key is in no process environment or argv, no file of a chat's home, /tmp or the journal.
#[test]
fn the_key_reaches_the_api_and_nothing_the_chat_can_read_outside_the_turn() {
    let m = boot_real("");
    m.start_picortex();
    m.api_script(
        json!([{"match": "slow-one", "steps": [{"sleep_ms": 4000, "text": "slow done"}]}]),
    );
    let sim = m.sim();
    let r = sim.text(OWNER, None, "slow-one please");
    let chat = r["chat_id"].as_str().unwrap().to_owned();
    // The CLI has sent its request (it holds the key now) and waits for the answer.
    // The stand-in records a request once answered: wait for the chat's CLI process instead,
    // then give it time to have read the key and sent its request.
    let user = format!("chat-{}", chat_tag(&chat));
    m.wait_for("the real CLI running in the turn", T, || {
        (m.sh(&format!("pgrep -u {user} -x claude")).code == 0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let env_hits = m.files_holding(KEY, "/proc/[0-9]*/environ /proc/[0-9]*/cmdline");
    assert!(
        env_hits.is_empty(),
        "key in process environments or argv: {env_hits:?}"
    );
    const FILES: &str = "/var/lib/picortex /tmp /var/tmp /home";
    let file_hits = m.files_holding(KEY, FILES);
    assert!(file_hits.is_empty(), "key in files: {file_hits:?}");
    m.wait_reply_containing(&chat, "slow done", T);
    m.wait_settled(T);
    let file_hits = m.files_holding(KEY, FILES);
    assert!(
        file_hits.is_empty(),
        "key in files after the turn: {file_hits:?}"
    );
    assert!(!m.journal("").contains(KEY), "key in the journal");
    let req = requests_with(&m, "slow-one").pop().unwrap();
    assert_eq!(req["headers"]["x-api-key"], KEY);
}

/// A subscription token (`claude setup-token`) as the turn's credential, handed over by
/// picortex-run as an inherited descriptor: the API sees it as an OAuth bearer, and it is in no
/// environment, argv or file of the chat.
#[test]
fn a_subscription_token_reaches_the_api_only_through_the_turn() {
    const TOKEN: &str = "sk-ant-oat01-realcli-subscription-93c1";
    let m = Machine::boot();
    std::fs::write(
        m.path("/etc/picortex/credentials/claude-oauth-token"),
        TOKEN,
    )
    .unwrap();
    m.ok("chmod 600 /etc/picortex/credentials/claude-oauth-token");
    m.use_real_cli("");
    m.start_picortex();
    m.api_script(
        json!([{"match": "oauth-slow", "steps": [{"sleep_ms": 3000, "text": "oauth done"}]}]),
    );
    let sim = m.sim();
    let chat = sim.text(OWNER, None, "oauth-slow hello")["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let user = format!("chat-{}", chat_tag(&chat));
    m.wait_for("the real CLI running in the turn", T, || {
        (m.sh(&format!("pgrep -u {user} -x claude")).code == 0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let hits = m.files_holding(
        TOKEN,
        "/proc/[0-9]*/environ /proc/[0-9]*/cmdline /var/lib/picortex /tmp /var/tmp /home",
    );
    assert!(
        hits.is_empty(),
        "token outside the operator's credential: {hits:?}"
    );
    m.wait_reply_containing(&chat, "oauth done", T);
    let req = requests_with(&m, "oauth-slow").pop().unwrap();
    assert_eq!(req["headers"]["authorization"], format!("Bearer {TOKEN}"));
    assert!(req["headers"]["x-api-key"].is_null(), "{}", req["headers"]);
    assert!(req["headers"]["anthropic-beta"]
        .as_str()
        .is_some_and(|b| b.contains("oauth")));
    assert!(!m.journal("").contains(TOKEN), "token in the journal");
}

/// The sandbox holds for the real CLI's tools (claude-cli.md §3: tools run as the turn's user;
/// picortex's fence does the rest): Bash and Read run, as the chat user, and cannot see another
/// chat's home or the gateway's database. The tool results the API receives show it.
#[test]
fn the_real_clis_tools_cannot_reach_another_chat_or_the_database() {
    let m = boot_real("");
    m.set_config("turns", "permission_mode", "\"bypassPermissions\"");
    m.start_picortex();
    let mut other = None;
    m.exchange("+15550002001", &mut other, "hello from the other chat");
    let other_home = format!(
        "/var/lib/picortex/chats/{}",
        chat_tag(other.as_deref().unwrap())
    );
    assert_eq!(m.sh(&format!("test -d {other_home}")).code, 0);
    assert_eq!(m.sh("test -f /var/lib/picortex/picortex.db").code, 0);
    m.api_script(json!([{"match": "snoop", "steps": [
        {"tool_use": {"name": "Bash", "input": {
            "command": format!("id -un; ls {other_home} 2>&1; head -c 16 /var/lib/picortex/picortex.db 2>&1; echo marker-end"),
            "description": "look around"}}},
        {"tool_use": {"name": "Read", "input": {"file_path": format!("{other_home}/.claude/.claude.json")}}},
        {"text": "snooped: {last_tool_result}"}]}]));
    let mut chat = None;
    let reply = m.exchange(OWNER, &mut chat, "snoop around");
    let tag = chat_tag(chat.as_deref().unwrap());
    let reqs = requests_with(&m, "snoop around");
    let results = api_tool_results(reqs.last().expect("requests"));
    assert_eq!(results.len(), 2, "{results:?}");
    let bash = &results[0];
    assert!(
        bash.contains(&format!("chat-{tag}")),
        "not run as the chat user: {bash}"
    );
    assert!(bash.contains("marker-end"), "the tool did not run: {bash}");
    assert!(
        bash.matches("No such file or directory").count() >= 2,
        "another chat's home or the database is visible: {bash}"
    );
    assert!(!bash.contains("SQLite format"), "{bash}");
    let read = &results[1];
    assert!(
        read.contains("does not exist") || read.contains("No such file") || read.contains("ENOENT"),
        "Read reached the other chat's home: {read}"
    );
    assert!(reply.contains("snooped:"), "{reply}");
}

/// claude-cli.md §5: API errors end in `is_error` results (after the CLI's own retries), which
/// become honest replies; a 429 with retry-after once and a stream cut once are retried by the
/// CLI and the turn still answers.
#[test]
fn api_errors_become_honest_replies() {
    let m = boot_real("CLAUDE_CODE_MAX_RETRIES = \"2\"");
    m.start_picortex();
    m.api_script(json!([
        {"match": "e401", "steps": [{"error": 401, "times": 99}]},
        {"match": "e429-once", "steps": [{"error": 429, "retry_after": 1, "times": 1}]},
        {"match": "e429", "steps": [{"error": 429, "retry_after": 0, "times": 99}]},
        {"match": "e529", "steps": [{"error": 529, "times": 99}]},
        {"match": "e500", "steps": [{"error": 500, "times": 99}]},
        {"match": "cut-once", "steps": [{"cut_after": "Partial ans", "times": 1}]},
        {"match": "cut-always", "steps": [{"cut_after": "Partial ans", "times": 99}]},
    ]));
    let cases = [
        ("e401 hi", "credentials were refused", "agent_error"),
        ("e429 hi", "rate-limiting", "agent_error"),
        ("e529 hi", "overloaded", "agent_error"),
        ("e500 hi", "failed while answering", "agent_error"),
        ("cut-always hi", "failed while answering", "agent_error"),
        ("e429-once hi", "standin-api: turn 1;", "ok"),
        ("cut-once hi", "standin-api: turn 1;", "ok"),
    ];
    // Owner handles of the test configuration: a chat each, so every case is a first turn.
    let people = [
        "+15550003000",
        "+15550003001",
        "+15550003002",
        "+15550003003",
        "+15550003004",
        "+15550009000",
        "+15550009001",
    ];
    for ((prompt, words, outcome), from) in cases.iter().zip(people) {
        let mut chat = None;
        let reply = m.exchange(from, &mut chat, prompt);
        assert!(reply.contains(words), "{prompt}: {reply}");
        let chat = chat.unwrap();
        let got = m.sql(&format!(
            "SELECT outcome FROM turns WHERE chat_id = '{chat}' ORDER BY rowid DESC LIMIT 1"
        ));
        assert_eq!(&got, outcome, "{prompt}");
        let n = requests_with(&m, prompt).len();
        assert!(n >= 2, "{prompt}: the CLI did not retry ({n} requests)");
    }
}

/// A tool of the real CLI allocating past the chat's MemoryMax is killed by the kernel; the CLI
/// survives, the API receives the tool's death (exit 137) as its result, and the turn answers.
#[test]
fn a_tool_killed_at_the_memory_cap_is_reported_to_the_real_cli() {
    let m = boot_real("");
    m.set_config("turns", "permission_mode", "\"bypassPermissions\"");
    m.set_config("turns", "memory_max", "\"384M\"");
    m.start_picortex();
    m.api_script(json!([{"match": "eat memory", "steps": [
        {"tool_use": {"name": "Bash", "input": {
            "command": "python3 -c 'b = bytearray(1 << 30); import time; time.sleep(30)'; echo exit=$?",
            "description": "allocate"}}},
        {"text": "after the tool: {last_tool_result}"}]}]));
    let mut chat = None;
    let reply = m.exchange(OWNER, &mut chat, "eat memory now");
    let results = api_tool_results(requests_with(&m, "eat memory now").last().unwrap());
    assert!(
        results.first().is_some_and(|r| r.contains("exit=137")),
        "the tool was not killed: {results:?}"
    );
    assert!(reply.contains("after the tool:"), "{reply}");
}

/// The real CLI itself over the chat's MemoryMax (it needs ~200 MB): the kernel kills it, the
/// turn ends as out_of_memory with the honest reply (claude-cli.md §6: no result at all).
#[test]
fn the_real_cli_over_the_memory_cap_is_out_of_memory() {
    let m = boot_real("");
    m.set_config("turns", "memory_max", "\"96M\"");
    m.start_picortex();
    let mut chat = None;
    let reply = m.exchange(OWNER, &mut chat, "too big for this chat");
    let chat = chat.unwrap();
    let outcome = m.sql(&format!(
        "SELECT outcome FROM turns WHERE chat_id = '{chat}' ORDER BY rowid DESC LIMIT 1"
    ));
    assert_eq!(outcome, "out_of_memory", "reply: {reply}");
    assert!(reply.to_lowercase().contains("memory"), "{reply}");
}

/// claude-cli.md §2: `--resume` of a session whose transcript is gone fails with "No conversation
/// found"; picortex-run starts a new session (audited) and the chat still gets its answer.
#[test]
fn a_lost_transcript_starts_a_new_session_with_the_real_cli() {
    let m = boot_real("");
    m.start_picortex();
    let mut chat = None;
    let a = m.exchange(OWNER, &mut chat, "remember me");
    assert!(a.contains("turn 1;"), "{a}");
    let chat = chat.unwrap();
    let home = format!("/var/lib/picortex/chats/{}", chat_tag(&chat));
    m.ok(&format!("rm -rf {home}/.claude/projects"));
    let b = m.exchange(OWNER, &mut Some(chat.clone()), "still there?");
    assert!(b.contains("standin-api: turn 1;"), "{b}");
    let audit = m.ok("journalctl --namespace='*' --no-pager -o verbose | grep -c 'session not found; starting a new one' || true");
    assert_ne!(audit.trim(), "0", "no session recovery in the journal");
}

/// claude-cli.md §1 and §3, the flags picortex-run relies on, as the real CLI honours them: the
/// owner's system prompt (`--append-system-prompt`) and `[agent] model` (`--model`) reach the
/// API; with `--disable-slash-commands` a prompt starting with `/` is plain text, except that the
/// name of a built-in command is refused ("/model isn't available in this environment"), never
/// run; `--permission-mode` is pinned (in `dontAsk`, the CLI refuses Bash and tells the API so).
#[test]
fn the_real_cli_honours_picortexs_flags() {
    let m = boot_real("");
    std::fs::write(
        m.path("/etc/picortex/system-prompt.md"),
        "Owner rule 4217: answer like a pirate.\n",
    )
    .unwrap();
    m.set_config(
        "turns",
        "system_prompt_file",
        "\"/etc/picortex/system-prompt.md\"",
    );
    m.set_config("turns", "permission_mode", "\"dontAsk\"");
    m.set_config("agent", "model", "\"claude-picortex-test-model\"");
    m.start_picortex();
    m.api_script(json!([{"match": "run a tool", "steps": [
        {"tool_use": {"name": "Bash", "input": {"command": "touch /var/lib/picortex/x; id", "description": "try"}}},
        {"text": "tool said: {last_tool_result}"}]}]));
    let mut chat = None;
    let a = m.exchange(OWNER, &mut chat, "/etc/hosts is broken");
    assert!(a.contains("you said \"/etc/hosts is broken\""), "{a}");
    let req = requests_with(&m, "/etc/hosts is broken")
        .pop()
        .expect("the prompt reached the API");
    assert_eq!(req["body"]["model"], "claude-picortex-test-model");
    assert!(
        req["body"]["system"]
            .to_string()
            .contains("Owner rule 4217"),
        "no owner system prompt: {}",
        req["body"]["system"]
    );
    // A built-in command's name is refused, not run (without the flag, 2.1.330 switches the
    // model on "/model opus"); the refusal is the turn's answer.
    let c = m.exchange(OWNER, &mut chat, "/model opus");
    assert!(c.contains("isn't available"), "{c}");
    assert!(
        requests_with(&m, "/model opus").is_empty(),
        "sent to the API"
    );
    let b = m.exchange(OWNER, &mut chat, "run a tool");
    let results = api_tool_results(requests_with(&m, "run a tool").last().unwrap());
    assert!(
        results
            .first()
            .is_some_and(|r| r.contains("don't ask mode")),
        "Bash was not refused by the pinned permission mode: {results:?}"
    );
    assert!(b.contains("tool said:"), "{b}");
}

/// claude-cli.md §2: `--session-id` for a session whose transcript exists fails with "already in
/// use"; picortex-run resumes it instead (audited), and the conversation goes on.
#[test]
fn a_session_id_already_in_use_is_resumed_with_the_real_cli() {
    let m = boot_real("");
    m.without_spares();
    m.start_picortex();
    let mut chat = None;
    let a = m.exchange(OWNER, &mut chat, "first");
    assert!(a.contains("turn 1;"), "{a}");
    let chat = chat.unwrap();
    m.wait_chat_settled(&chat, T);
    // The gateway forgets that the session was started: the next turn asks for --session-id.
    m.sql(&format!(
        "UPDATE chats SET session_started = 0 WHERE id = '{chat}'"
    ));
    let b = m.exchange(OWNER, &mut Some(chat.clone()), "second");
    assert!(b.contains("standin-api: turn 2;"), "not resumed: {b}");
    let audit = m.ok(
        "journalctl --namespace='*' --no-pager -o verbose | grep -c 'session already exists; resuming it' || true",
    );
    assert_ne!(audit.trim(), "0", "no session recovery in the journal");
}

/// claude-cli.md §2 (`--no-session-persistence`): a discriminator turn asks the real CLI whether
/// to answer a group message in a throwaway session; only the answer turn it lets through leaves
/// a transcript, and the chat's session never sees the question.
#[test]
fn the_discriminators_question_leaves_no_transcript_with_the_real_cli() {
    let m = boot_real("");
    m.start_picortex();
    m.api_script(json!([
        {"match": "You decide whether", "steps": [{"text": "{\"score\": 0.95}"}]},
    ]));
    let sim = m.sim();
    let g = sim.post(
        "/control/inbound",
        json!({"from": OWNER, "group": true, "participants": ["+15557770002"],
               "display_name": "Team", "text": "/picortex attention discriminate"}),
    );
    let group = g["chat_id"].as_str().unwrap().to_owned();
    m.wait_reply_containing(&group, "Attention for this chat is now discriminate", T);
    sim.text(
        "+15557770002",
        Some(&group),
        "can anyone check the build marker-7781?",
    );
    let reply = m.wait_reply_containing(&group, "standin-api:", T);
    let text = reply["text"].as_str().unwrap();
    assert!(text.contains("turn 1;"), "{text}");
    m.wait_settled(T);
    let asked = requests_with(&m, "marker-7781");
    assert_eq!(
        asked.len(),
        2,
        "a discriminator request and an answer request"
    );
    assert!(asked[0]["body"]["messages"]
        .to_string()
        .contains("You decide whether"));
    let home = format!("/var/lib/picortex/chats/{}", chat_tag(&group));
    let files = m.ok(&format!("find {home}/.claude/projects -name '*.jsonl'"));
    let files: Vec<&str> = files.lines().collect();
    assert_eq!(
        files.len(),
        1,
        "only the answer turn keeps a transcript: {files:?}"
    );
    let transcript = m.ok(&format!("cat {}", files[0]));
    assert!(transcript.contains("marker-7781"));
    assert!(
        !transcript.contains("You decide whether"),
        "the discriminator's question is in the chat's session"
    );
}
