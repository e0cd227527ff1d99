//! What leaves for a phone: `clean::for_phone` (no escape sequences, controls or bidi overrides;
//! at most the limit, plus the note saying what was cut) and `split::split_reply` (non-empty
//! parts within the limit in UTF-16 units; every non-whitespace char kept, in order).
//!
//! Input: two bytes of limit, then the text (invalid UTF-8 replaced, as the agent's output would
//! be by the time it is a `String`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use picortexd::linq::clean::for_phone;
use picortexd::linq::split::split_reply;

fn non_ws(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars().filter(|c| !c.is_whitespace())
}

fn forbidden(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn clean(text: &str, max: usize) {
    let out = for_phone(text, max);
    assert!(!out.chars().any(forbidden), "{out:?}");
    // The note, when there is one, is the only thing past the limit.
    let body = match out.rfind("\n\n[… cut here: ") {
        Some(i) if out.ends_with("Ask me for the rest, or for it as a file.]") => &out[..i],
        _ => &out,
    };
    assert!(
        body.chars().count() <= max,
        "{} > {max}",
        body.chars().count()
    );
    // Nothing is added: what is kept is a subsequence of the input.
    let mut src = text.chars();
    for c in body.chars() {
        assert!(src.any(|d| d == c), "{c:?} is not from the input");
    }
}

fn split(text: &str, max: usize) {
    let parts = split_reply(text, max);
    let limit = max.max(2);
    for p in &parts {
        assert!(!p.is_empty());
        assert!(p.encode_utf16().count() <= limit, "{p:?} over {limit}");
    }
    assert!(
        non_ws(text).eq(parts.iter().flat_map(|p| non_ws(p))),
        "content lost or reordered"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((limit, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let limit = usize::from(u16::from_le_bytes(*limit));
    // Small limits make many parts out of a short input; the gateway's own limits are 100+.
    clean(&text, limit % 2048);
    split(&text, limit % 512);
});
