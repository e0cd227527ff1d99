//! SPEC T3 and T6, in a real turn: the agent's argv and environment, the seeded onboarding state,
//! the owner's system prompt, per-chat permission mode, session recovery told once, usage stored
//! per turn, and the daily budget.

use picortex_integration::{chat_tag, Machine};

const OWNER: &str = "+15550002000";

#[test]
fn argv_environment_prompt_permissions_and_onboarding() {
    let m = Machine::boot();
    std::fs::write(
        m.path("/etc/picortex/system-prompt.md"),
        "Answer like a pirate.\n",
    )
    .unwrap();
    m.set_config(
        "turns",
        "system_prompt_file",
        "\"/etc/picortex/system-prompt.md\"",
    );
    // Every turn through StartTurn: a spare carries the limits of the moment it started, and
    // this test changes a chat's memory limit between turns.
    m.without_spares();
    m.start_picortex();
    let mut chat = None;

    let r = m.exchange(OWNER, &mut chat, "#argv #env #system #cwd hello");
    for want in [
        "-p",
        "--output-format json",
        "--disable-slash-commands",
        "--permission-mode default",
        "--session-id",
    ] {
        assert!(r.contains(want), "argv lacks {want:?}: {r}");
    }
    assert!(!r.contains("--resume"), "first turn must not resume: {r}");
    assert!(
        r.contains("Answer like a pirate."),
        "system prompt not appended: {r}"
    );
    for var in [
        "DISABLE_AUTOUPDATER",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
        "CLAUDE_CONFIG_DIR",
        "HOME",
    ] {
        assert!(r.contains(var), "environment lacks {var}: {r}");
    }
    for var in [
        "CLAUDECODE",
        "CLAUDE_CODE_ENTRYPOINT",
        "INVOCATION_ID",
        "NOTIFY_SOCKET",
        "JOURNAL_STREAM",
    ] {
        assert!(
            !r.contains(&format!("{var},"))
                && !r.contains(&format!("{var}]"))
                && !r.contains(&format!("{var} ")),
            "environment leaks {var}: {r}"
        );
    }
    let chat_id = chat.clone().unwrap();
    let home = format!("/var/lib/picortex/chats/{}", chat_tag(&chat_id));
    assert!(r.contains(&home), "cwd is not the chat's home: {r}");
    let state = m.ok(&format!("cat {home}/.claude/.claude.json"));
    assert!(
        state.contains("\"hasCompletedOnboarding\":true")
            || state.contains("\"hasCompletedOnboarding\": true"),
        "{state}"
    );

    // Later turns resume; a per-chat permission mode is pinned on every turn.
    m.sql(&format!(
        "UPDATE chats SET permission_mode = 'acceptEdits' WHERE id = '{chat_id}'"
    ));
    let r = m.exchange(OWNER, &mut chat, "#argv again");
    assert!(
        r.contains("--resume") && r.contains("--permission-mode acceptEdits"),
        "{r}"
    );

    // A per-chat memory limit overrides turns.memory_max on the chat's slice.
    let slice = format!("picortex-chat-{}.slice", chat_tag(&chat_id));
    assert_eq!(
        m.ok(&format!("systemctl show -P MemoryMax {slice}")).trim(),
        (256u64 << 20).to_string()
    );
    m.sql(&format!(
        "UPDATE chats SET memory_max = {} WHERE id = '{chat_id}'",
        128u64 << 20
    ));
    m.exchange(OWNER, &mut chat, "smaller now");
    assert_eq!(
        m.ok(&format!("systemctl show -P MemoryMax {slice}")).trim(),
        (128u64 << 20).to_string()
    );
}

#[test]
fn a_lost_session_is_replaced_and_told_once_and_usage_and_budget_hold() {
    let m = Machine::boot();
    m.start_picortex();
    let mut chat = None;
    assert!(m
        .exchange(OWNER, &mut chat, "remember the word apricot")
        .contains("turn 1 of session"));
    let chat_id = chat.clone().unwrap();
    let home = format!("/var/lib/picortex/chats/{}", chat_tag(&chat_id));

    // Someone wiped the agent's transcripts: the next turn starts a new session and says so.
    m.ok(&format!("rm -rf {home}/.claude/projects"));
    let r = m.exchange(OWNER, &mut chat, "what was the word?");
    assert!(r.starts_with("(I had lost our earlier conversation"), "{r}");
    assert!(r.contains("turn 1 of session"), "{r}");
    let r = m.exchange(OWNER, &mut chat, "and now?");
    assert!(
        !r.contains("lost our earlier conversation"),
        "told twice: {r}"
    );
    assert!(
        r.contains("turn 2 of session")
            && r.contains("before that you said \"what was the word?\""),
        "new session not continued: {r}"
    );

    // Usage is stored per turn.
    let usage = m.sql(&format!("SELECT COUNT(*) FROM turns WHERE chat_id = '{chat_id}' AND outcome = 'ok' AND cost_usd > 0 AND input_tokens > 0 AND output_tokens > 0"));
    assert_eq!(usage, "3", "usage not stored per turn");

    // A daily budget below what was spent stops the next turn, with a clear reply.
    m.sql(&format!(
        "UPDATE chats SET daily_budget_usd = 0.0001 WHERE id = '{chat_id}'"
    ));
    let r = m.exchange(OWNER, &mut chat, "one more?");
    assert!(r.contains("used up today's budget"), "{r}");
    assert_eq!(m.sql(&format!("SELECT outcome FROM turns WHERE chat_id = '{chat_id}' ORDER BY created_at DESC LIMIT 1")), "budget_exhausted");
    let runs = m.journal("SYSLOG_IDENTIFIER=picortex-run | grep -c 'turn started' || true");
    assert_eq!(runs.trim(), "3", "the agent ran despite the budget");
}
