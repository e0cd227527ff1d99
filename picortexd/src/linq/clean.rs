//! What may leave for a phone (SPEC L4, P7): every text the gateway sends is cleaned of what a
//! hostile agent could use against the reader or the channel — terminal escape sequences, NUL and
//! other control characters, bidirectional overrides that make text read differently than it is —
//! and cut to a bounded length, so one turn cannot become hundreds of messages.

/// Characters that reorder text (Trojan Source, CVE-2021-42574): embeddings, overrides, isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` without escape sequences and control characters (newlines and tabs stay), at most
/// `max_chars` characters; a longer text is cut at a whitespace near the limit with a note.
pub fn for_phone(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    let mut chars = text.chars().peekable();
    let mut kept = 0usize;
    let mut dropped = 0usize;
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC: CSI (ESC [ … final byte 0x40–0x7e), OSC (ESC ] … BEL or ESC \), or one more char.
            match chars.next() {
                Some('[') => {
                    for d in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&d) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(d) = chars.next() {
                        if d == '\u{7}' || (d == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        let control = (c.is_control() && c != '\n' && c != '\t') || is_bidi_control(c);
        if control {
            continue;
        }
        if kept >= max_chars {
            dropped += 1;
            continue;
        }
        out.push(c);
        kept += 1;
    }
    if dropped == 0 {
        return out;
    }
    // Cut back to a word boundary, if one is near (within 200 bytes, on a char boundary).
    let mut floor = out.len().saturating_sub(200);
    while !out.is_char_boundary(floor) {
        floor -= 1;
    }
    if let Some(i) = out[floor..].rfind(char::is_whitespace) {
        let at = floor + i;
        dropped += out[at..].chars().count();
        out.truncate(at);
    }
    format!(
        "{}\n\n[… cut here: {dropped} more characters. Ask me for the rest, or for it as a file.]",
        out.trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_bidi_overrides_are_removed() {
        let t = "\u{1b}[31mred\u{1b}[0m \u{1b}]0;title\u{7}ok\u{0}\u{7} a\u{202E}b\u{2066}c\r\nnext\tline";
        assert_eq!(for_phone(t, 1000), "red ok abc\nnext\tline");
        assert_eq!(
            for_phone("é ü 🙂 ‏", 100),
            "é ü 🙂 ‏",
            "ordinary text and marks stay"
        );
    }

    #[test]
    fn long_texts_are_cut_with_a_note() {
        let t = "word ".repeat(10_000);
        let c = for_phone(&t, 1000);
        assert!(c.chars().count() < 1100, "{}", c.chars().count());
        assert!(c.contains("more characters"), "{c}");
        assert!(c.starts_with("word word"));
        assert_eq!(for_phone("short", 1000), "short");
        let no_space = "x".repeat(5000);
        assert!(for_phone(&no_space, 1000).starts_with(&"x".repeat(1000)));
    }

    #[test]
    fn long_texts_of_wide_chars_are_cut_on_char_boundaries() {
        // Found by the `reply` fuzz target: 200 bytes back from the end of the kept text fell
        // inside a multi-byte char (3 bytes for CJK, 4 for emoji) and the slice panicked.
        for (text, width) in [
            ("日".repeat(300), 3),
            ("😀".repeat(300), 4),
            ("é".repeat(301), 2),
        ] {
            for max in [100, 101, 102, 103] {
                let c = for_phone(&text, max);
                let kept = c.split("\n\n[").next().unwrap_or_default();
                assert_eq!(kept.chars().count(), max, "{width}-byte chars, max {max}");
                assert!(c.contains("more characters"), "{c}");
            }
        }
        // The word boundary is still found when the window starts inside a char.
        let words = format!("{} {}", "日本".repeat(100), "語".repeat(100));
        let c = for_phone(&words, 250);
        assert!(
            c.starts_with(&format!("{}\n\n[", "日本".repeat(100))),
            "{c}"
        );
        assert!(c.contains(" 101 more characters"), "{c}"); // 301 - 200 kept
    }
}
