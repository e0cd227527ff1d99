//! Splits a long reply into message-sized parts (SPEC L4): at the last paragraph break that
//! fits, else a sentence end or line break, else whitespace, else a hard cut. Lengths are
//! counted in UTF-16 code units, as Linq counts them, which also bounds the char count. A hard
//! cut never splits a char and avoids the obvious grapheme joins (ZWJ, variation selectors,
//! combining marks, skin tones), but without a grapheme table it is best effort.

/// The per-message limit the gateway uses.
pub const DEFAULT_MAX_CHARS: usize = 4000;

/// Splits `text` into trimmed, non-empty parts of at most `max_chars` UTF-16 code units each
/// (so also at most `max_chars` chars). All non-whitespace content is kept, in order. A
/// `max_chars` below 2 is treated as 2, the size of the widest char.
pub fn split_reply(text: &str, max_chars: usize) -> Vec<String> {
    let max = max_chars.max(2);
    let mut parts = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let limit = prefix_within(rest, max);
        if limit == rest.len() {
            parts.push(rest.to_owned());
            break;
        }
        let cut = paragraph_cut(rest, limit)
            .or_else(|| sentence_cut(rest, limit))
            .or_else(|| whitespace_cut(rest, limit))
            .unwrap_or_else(|| hard_cut(rest, limit));
        let (head, tail) = rest.split_at(cut);
        let head = head.trim_end();
        if !head.is_empty() {
            parts.push(head.to_owned());
        }
        rest = tail.trim_start();
    }
    parts
}

/// Byte length of the longest prefix of `s` within `max` UTF-16 units (always a char boundary).
fn prefix_within(s: &str, max: usize) -> usize {
    let mut units = 0;
    for (i, c) in s.char_indices() {
        units += c.len_utf16();
        if units > max {
            return i;
        }
    }
    s.len()
}

/// The cut positions considered are byte offsets `p <= limit`, so the part `s[..p]` fits; a
/// boundary char may sit exactly at `limit` (just outside the part).
fn through_limit(s: &str, limit: usize, boundary: impl Fn(char) -> bool) -> &str {
    match s[limit..].chars().next() {
        Some(c) if boundary(c) => &s[..limit + c.len_utf8()],
        _ => &s[..limit],
    }
}

/// End of the last paragraph that fits: a newline followed by a blank (whitespace-only) line.
fn paragraph_cut(s: &str, limit: usize) -> Option<usize> {
    through_limit(s, limit, |c| c == '\n')
        .match_indices('\n')
        .map(|(i, _)| i)
        .rev()
        .find(|&i| i > 0 && blank_line_follows(s, i))
}

/// The line after the newline at `nl` is blank and itself ends in a newline.
fn blank_line_follows(s: &str, nl: usize) -> bool {
    let after = &s[nl + 1..];
    after
        .find('\n')
        .is_some_and(|k| after[..k].trim().is_empty())
}

/// After the last sentence end (`.`, `!`, `?`, `…` and CJK equivalents, plus closing quotes or
/// brackets) that is followed by whitespace, or at the last line break, that fits.
fn sentence_cut(s: &str, limit: usize) -> Option<usize> {
    let mut best = None;
    let mut iter = through_limit(s, limit, |c| c == '\n')
        .char_indices()
        .peekable();
    while let Some((i, c)) = iter.next() {
        if c == '\n' && i > 0 {
            best = Some(i);
        } else if matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？') {
            let mut end = i + c.len_utf8();
            while let Some(&(j, next)) = iter.peek() {
                if !matches!(next, '"' | '\'' | ')' | ']' | '”' | '’' | '»' | '」') {
                    break;
                }
                end = j + next.len_utf8();
                iter.next();
            }
            // Look past the window: what follows decides whether this is a sentence end.
            let followed_by_space = s[end..].chars().next().is_none_or(char::is_whitespace);
            // CJK full stops need no trailing space.
            let cjk = matches!(c, '。' | '！' | '？');
            if end <= limit && (followed_by_space || cjk) {
                best = Some(end);
            }
        }
    }
    best
}

/// At the last whitespace that follows some content and fits.
fn whitespace_cut(s: &str, limit: usize) -> Option<usize> {
    through_limit(s, limit, char::is_whitespace)
        .char_indices()
        .rev()
        .find(|&(i, c)| i > 0 && c.is_whitespace())
        .map(|(i, _)| i)
}

/// `limit`, moved back so as not to split obvious grapheme clusters, unless that would leave
/// nothing (then the cut stays at `limit`, which is still a char boundary).
fn hard_cut(s: &str, limit: usize) -> usize {
    let mut cut = limit;
    while cut > 0 {
        let next = s[cut..].chars().next();
        let prev = s[..cut].chars().next_back();
        let joined = next.is_some_and(continues_cluster) || prev == Some('\u{200D}');
        if !joined {
            break;
        }
        cut -= prev.map_or(1, char::len_utf8);
    }
    if cut == 0 {
        limit
    } else {
        cut
    }
}

/// Chars that attach to the char before them.
fn continues_cluster(c: char) -> bool {
    matches!(c,
        '\u{200D}'                      // zero-width joiner
        | '\u{FE00}'..='\u{FE0F}'       // variation selectors
        | '\u{0300}'..='\u{036F}'       // combining diacritics
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{FE20}'..='\u{FE2F}'
        | '\u{1F3FB}'..='\u{1F3FF}'     // skin-tone modifiers
        | '\u{E0020}'..='\u{E007F}'     // tag characters (flag sequences)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(s: &str) -> usize {
        s.encode_utf16().count()
    }

    fn non_ws(s: &str) -> String {
        s.chars().filter(|c| !c.is_whitespace()).collect()
    }

    fn check_invariants(text: &str, max: usize, parts: &[String]) {
        for p in parts {
            assert!(!p.is_empty(), "empty part for {text:?}");
            assert_eq!(p.trim(), p, "untrimmed part {p:?}");
            assert!(units(p) <= max.max(2), "part over {max}: {p:?}");
            assert!(p.chars().count() <= max.max(2));
        }
        assert_eq!(
            non_ws(&parts.concat()),
            non_ws(text),
            "content lost or reordered for max {max}: {text:?} -> {parts:?}"
        );
    }

    #[test]
    fn short_and_empty() {
        assert_eq!(split_reply("  hello  ", 4000), vec!["hello"]);
        assert!(split_reply("", 10).is_empty());
        assert!(split_reply(" \n\n \t", 10).is_empty());
        assert_eq!(split_reply("exactly10!", 10), vec!["exactly10!"]);
    }

    #[test]
    fn paragraphs_first() {
        let text = "First paragraph. It has two sentences.\n\nSecond one here.\n  \nThird.";
        assert_eq!(
            split_reply(text, 60),
            vec![
                "First paragraph. It has two sentences.\n\nSecond one here.",
                "Third."
            ]
        );
        assert_eq!(
            split_reply(text, 40),
            vec![
                "First paragraph. It has two sentences.",
                "Second one here.\n  \nThird."
            ]
        );
        assert_eq!(
            split_reply(text, 20),
            vec![
                "First paragraph.",
                "It has two",
                "sentences.",
                "Second one here.",
                "Third."
            ]
        );
    }

    #[test]
    fn then_sentences_then_lines() {
        let text = "One sentence here. Another one follows! Is this a third? Yes.";
        assert_eq!(
            split_reply(text, 40),
            vec![
                "One sentence here. Another one follows!",
                "Is this a third? Yes."
            ]
        );
        // Decimal points and version numbers are not sentence ends.
        assert_eq!(
            split_reply("Pi is 3.14159 and v1.2.3 shipped today ok", 20),
            vec!["Pi is 3.14159 and", "v1.2.3 shipped today", "ok"]
        );
        // Closing quotes stay with their sentence.
        assert_eq!(
            split_reply("He said \"stop.\" Then he left the room quietly.", 20),
            vec!["He said \"stop.\"", "Then he left the", "room quietly."]
        );
        // A list splits at line breaks.
        assert_eq!(
            split_reply("- apples\n- pears\n- plums", 18),
            vec!["- apples\n- pears", "- plums"]
        );
        // CJK sentence ends need no space.
        assert_eq!(
            split_reply("今日は晴れ。明日は雨です。", 8),
            vec!["今日は晴れ。", "明日は雨です。"]
        );
    }

    #[test]
    fn then_whitespace_then_hard_cut() {
        assert_eq!(
            split_reply("alpha beta gamma delta", 11),
            vec!["alpha beta", "gamma delta"]
        );
        assert_eq!(
            split_reply("abcdefghijklmnopqrstuvwxyz", 10),
            vec!["abcdefghij", "klmnopqrst", "uvwxyz"]
        );
        let url = format!("see https://example.com/{}", "x".repeat(30));
        let parts = split_reply(&url, 20);
        assert_eq!(parts[0], "see");
        check_invariants(&url, 20, &parts);
    }

    #[test]
    fn utf16_and_graphemes() {
        // Each emoji is 2 UTF-16 units: 5 of them need 10 units.
        let emoji = "😀😀😀😀😀";
        let parts = split_reply(emoji, 4);
        assert_eq!(parts, vec!["😀😀", "😀😀", "😀"]);
        // An odd limit never splits a surrogate pair.
        assert_eq!(split_reply(emoji, 5), vec!["😀😀", "😀😀", "😀"]);
        // Keep ZWJ families and skin tones together when possible.
        let family = "👨\u{200D}👩\u{200D}👧"; // 8 units
        let text = format!("ab{family}");
        assert_eq!(
            split_reply(&text, 8),
            vec!["ab".to_owned(), family.to_owned()]
        );
        let thumbs = "👍🏽"; // 4 units
        assert_eq!(split_reply(&format!("x{thumbs}"), 4), vec!["x", thumbs]);
        let accented = "e\u{0301}e\u{0301}e\u{0301}";
        assert_eq!(
            split_reply(accented, 3),
            vec!["e\u{0301}", "e\u{0301}", "e\u{0301}"]
        );
        // Too-small limits are clamped rather than looping or panicking.
        check_invariants(emoji, 0, &split_reply(emoji, 0));
        check_invariants("abc", 1, &split_reply("abc", 1));
    }

    #[test]
    fn default_limit_keeps_long_replies_under_4000() {
        let para = "This is a fairly ordinary sentence about a deployment. ".repeat(40);
        let text = [para.as_str(); 5].join("\n\n");
        let parts = split_reply(&text, DEFAULT_MAX_CHARS);
        assert!(parts.len() >= 3);
        check_invariants(&text, DEFAULT_MAX_CHARS, &parts);
        // Paragraph boundaries are used: no part starts mid-paragraph.
        assert!(parts.iter().all(|p| p.starts_with("This is")));
    }

    /// Deterministic xorshift so the property test needs no extra crates.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn property_content_kept_in_order_and_bounded() {
        const PIECES: &[&str] = &[
            "word",
            "a",
            "longerwordwithoutspaces",
            " ",
            " ",
            "  ",
            "\n",
            "\n\n",
            "\n \n",
            ". ",
            "! ",
            "?",
            "…",
            "。",
            "\"",
            ")",
            "😀",
            "👍🏽",
            "👨\u{200D}👩\u{200D}👧",
            "e\u{0301}",
            "日本語",
            "\t",
            "-",
            "3.14",
            "é",
            "\u{FE0F}",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2000 {
            let len = rng.below(60);
            let text: String = (0..len).map(|_| PIECES[rng.below(PIECES.len())]).collect();
            let max = rng.below(40);
            let parts = split_reply(&text, max);
            check_invariants(&text, max, &parts);
            if units(text.trim()) <= max.max(2) && !text.trim().is_empty() {
                assert_eq!(parts, vec![text.trim().to_owned()]);
            }
        }
    }
}
