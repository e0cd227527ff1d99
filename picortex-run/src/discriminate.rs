//! The discriminator turn (SPEC A3): the same sandboxed path as an answer, but the agent is asked
//! only whether the bot should speak. The instructions are the chat's own
//! `~/.picortex/prompts/discriminator.md`, seeded from `DEFAULT_PROMPT` the first time so the owner
//! can edit them; the agent runs with the request's model in a throwaway session
//! (`--no-session-persistence`), so the chat's own session never sees the question.

use crate::seed::{seeded_file, SeedError};
use picortex_proto::turn::TurnRequest;
use std::path::Path;

pub const PROMPT_DIRS: [&str; 2] = [".picortex", "prompts"];
pub const PROMPT_FILE: &str = "discriminator.md";
/// Instructions longer than this are refused (the file is the owner's, but a turn could grow it).
pub const MAX_PROMPT_BYTES: u64 = 64 << 10;

pub const DEFAULT_PROMPT: &str = "\
You decide whether an AI assistant that is a member of a group chat should reply to the latest \
message. It was not mentioned by name. Reply only when the message asks something the assistant \
can help with, or is clearly meant for it; stay quiet for small talk, messages between people, \
jokes, and anything already answered.

Answer with one JSON object and nothing else: {\"score\": <a number from 0 to 1>, \"reason\": \
\"<a few words>\"}. 1 means the assistant should certainly reply, 0 that it should stay quiet.
";

/// The chat's instructions, seeded with the default when missing.
pub fn instructions(home: &Path) -> Result<String, SeedError> {
    let bytes = seeded_file(
        home,
        &PROMPT_DIRS,
        PROMPT_FILE,
        DEFAULT_PROMPT.as_bytes(),
        MAX_PROMPT_BYTES,
    )?;
    String::from_utf8(bytes).map_err(|_| SeedError(format!("{PROMPT_FILE} is not UTF-8")))
}

/// The request the agent actually gets: the instructions over the gateway's prompt (the message
/// and its context), in a fresh session nobody resumes.
pub fn request(req: &TurnRequest, instructions: &str) -> TurnRequest {
    TurnRequest {
        session_id: uuid::Uuid::new_v4().to_string(),
        resume: false,
        prompt: format!("{}\n\n---\n\n{}", instructions.trim_end(), req.prompt),
        append_system_prompt: None,
        ..req.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use picortex_proto::turn::TurnKind;
    use std::os::unix::fs::symlink;

    fn req() -> TurnRequest {
        TurnRequest {
            turn_id: "0123456789abcdef0123456789abcdef".into(),
            chat_id: "4c6113a3-cb58-46e5-a29c-326444779872".into(),
            session_id: "c91fb957-2f1e-4c4b-9a51-5b1d0c3e7a10".into(),
            resume: true,
            prompt: "lunch anyone?".into(),
            permission_mode: "default".into(),
            append_system_prompt: Some("owner".into()),
            kind: TurnKind::Discriminate,
            model: Some("haiku".into()),
        }
    }

    #[test]
    fn seeds_once_then_reads_the_owners_edit() {
        let home = tempfile::tempdir().unwrap();
        assert_eq!(instructions(home.path()).unwrap(), DEFAULT_PROMPT);
        let f = home.path().join(".picortex/prompts/discriminator.md");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), DEFAULT_PROMPT);
        std::fs::write(&f, "Only answer questions about cats.").unwrap();
        assert_eq!(
            instructions(home.path()).unwrap(),
            "Only answer questions about cats."
        );
    }

    #[test]
    fn a_symlinked_prompt_is_refused() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".picortex")).unwrap();
        symlink("/etc", home.path().join(".picortex/prompts")).unwrap();
        assert!(instructions(home.path()).is_err());
        std::fs::remove_file(home.path().join(".picortex/prompts")).unwrap();
        std::fs::create_dir(home.path().join(".picortex/prompts")).unwrap();
        symlink(
            "/etc/shadow",
            home.path().join(".picortex/prompts/discriminator.md"),
        )
        .unwrap();
        let e = instructions(home.path()).unwrap_err();
        assert!(e.0.contains("symlink"), "{e}");
    }

    #[test]
    fn the_agent_gets_a_throwaway_session() {
        let r = request(&req(), "Decide.\n");
        assert!(!r.resume);
        assert_ne!(r.session_id, req().session_id);
        assert_eq!(r.append_system_prompt, None);
        assert_eq!(r.prompt, "Decide.\n\n---\n\nlunch anyone?");
        assert_eq!(r.model.as_deref(), Some("haiku"));
    }
}
