//! Bounds on what callers send, and the one way caller input is quoted back.
//!
//! Every string, list and number a caller controls has a bound here or next
//! to the rule that reads it. Errors quote caller input only through
//! [`quote`]: at most [`MAX_QUOTE`] characters, with control and
//! bidirectional-formatting characters escaped, so an error can neither grow
//! past a client's metadata limit nor rewrite a terminal line.

use std::fmt::Write as _;

/// Most characters of caller input quoted in an error.
pub const MAX_QUOTE: usize = 48;
/// Longest `filter` of a list call, in bytes.
pub const MAX_FILTER_LEN: usize = 1024;
/// Most conditions in one `filter`.
pub const MAX_FILTER_CONDITIONS: usize = 16;
/// Longest `page_token`, in bytes (real ones are 54).
pub const MAX_PAGE_TOKEN_LEN: usize = 128;
/// Longest resource name a caller may send (`namespaces/…/apitokens/…`).
pub const MAX_NAME_LEN: usize = 128;
/// Longest etag a caller may send.
pub const MAX_ETAG_LEN: usize = 64;
/// Most paths in an update mask.
pub const MAX_MASK_PATHS: usize = 16;
/// Longest `user-agent` kept in the audit log, in characters.
pub const MAX_USER_AGENT: usize = 200;
/// Longest `x-request-id` accepted from a caller; longer or odd ones are
/// replaced by one the server makes up.
pub const MAX_REQUEST_ID: usize = 64;

/// Whether `c` would change how a terminal or a page shows the text around
/// it: control characters (C0, DEL, C1) and the bidirectional overrides and
/// isolates (U+202A–U+202E, U+2066–U+2069, U+200E/U+200F, U+061C).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
        )
}

/// `text` made safe to print: unsafe characters (see [`is_unsafe_char`])
/// written as `\n`, `\t`, `\r` or `\u{…}`; nothing else changes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if is_unsafe_char(c) => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// Caller input as an error may quote it: escaped (see [`escape`]) and cut
/// to [`MAX_QUOTE`] characters, with the length of the rest.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_QUOTE * 2) + 2);
    out.push('`');
    for (taken, c) in text.chars().enumerate() {
        if taken == MAX_QUOTE {
            let rest = text.chars().count() - taken;
            let _ = write!(out, "`… ({rest} more characters)");
            return out;
        }
        push_escaped(&mut out, c);
    }
    out.push('`');
    out
}

/// A map key as a field path shows it: `"key"`, escaped, with `"` and `\`
/// escaped too, and cut to [`MAX_QUOTE`] characters (marked with `…`).
pub fn quote_key(key: &str) -> String {
    let mut out = String::from('"');
    for (index, c) in key.chars().enumerate() {
        if index == MAX_QUOTE {
            out.push('…');
            break;
        }
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => push_escaped(&mut out, c),
        }
    }
    out.push('"');
    out
}

/// `text` cut to at most `max` characters (on a character boundary).
pub fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_short_and_inert() {
        assert_eq!(quote("abc"), "`abc`");
        assert_eq!(quote("a\nb\u{1b}[31m"), "`a\\nb\\u{1b}[31m`");
        assert_eq!(quote("x\u{202e}y"), "`x\\u{202e}y`");
        let long = "é".repeat(100_000);
        let quoted = quote(&long);
        assert!(quoted.chars().count() < MAX_QUOTE + 40, "{quoted}");
        assert!(quoted.ends_with("(99952 more characters)"), "{quoted}");
    }

    #[test]
    fn keys_are_quoted_like_field_paths() {
        assert_eq!(quote_key("env"), "\"env\"");
        assert_eq!(quote_key("a\"b\n"), "\"a\\\"b\\n\"");
        assert!(quote_key(&"k".repeat(100_000)).len() < MAX_QUOTE + 8);
    }

    #[test]
    fn escape_keeps_ordinary_text() {
        assert_eq!(escape("CI deploy — prod ✓"), "CI deploy — prod ✓");
        assert_eq!(escape("a\u{7f}b\u{85}c"), "a\\u{7f}b\\u{85}c");
        assert_eq!(escape("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
    }

    #[test]
    fn truncate_respects_characters() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 10), "hi");
    }
}
