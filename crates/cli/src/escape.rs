//! Terminal-safe text. Stored fields (display names, descriptions, labels,
//! creators, audit details, user agents) and the server's error messages are
//! written to a terminal only through [`escape`], so that a value can neither
//! move the cursor, recolour the screen, start a new line that looks like
//! another field, nor reorder what follows it (bidi overrides).

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must never reach a terminal as it is: C0 controls (newline and
/// tab included), DEL, C1 controls, the bidi controls (U+061C, U+200E,
/// U+200F, U+202A–U+202E, U+2066–U+2069), the line and paragraph separators
/// (U+2028, U+2029) and the invisible U+200B, U+2060 and U+FEFF.
pub(crate) fn is_unsafe(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{61c}'
            | '\u{200b}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// `text` with every [unsafe](is_unsafe) character written as a visible
/// escape: `\n`, `\t`, `\r`, `\x1b` (other ASCII controls and DEL), `\u{85}`
/// or `\u{202e}` (the rest). A backslash becomes `\\`, so an escape in the
/// output always means the character, never the same text typed in.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c == '\\' || is_unsafe(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if is_unsafe(c) && u32::from(c) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Input quoted in a message: [escaped](escape) and cut to `max` characters
/// (with `…`), between backticks.
pub(crate) fn quote(text: &str, max: usize) -> String {
    let escaped = escape(text);
    if escaped.chars().count() <= max {
        format!("`{escaped}`")
    } else {
        let cut: String = escaped.chars().take(max).collect();
        format!("`{cut}…`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        for text in ["", "CI deploy", "Überweisung — prod", "日本語 ✓", "a/b=c"] {
            assert!(matches!(escape(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn c0_controls_and_del_are_escaped() {
        assert_eq!(escape("a\nrole: ROLE_OWNER"), "a\\nrole: ROLE_OWNER");
        assert_eq!(escape("tab\there"), "tab\\there");
        assert_eq!(escape("cr\rx"), "cr\\rx");
        assert_eq!(escape("\u{1b}[31mred\u{1b}[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(escape("nul\0bel\u{7}"), "nul\\x00bel\\x07");
        assert_eq!(escape("del\u{7f}"), "del\\x7f");
        for code in (0u32..0x20).chain([0x7f]) {
            let c = char::from_u32(code).unwrap();
            let escaped = escape(&c.to_string()).into_owned();
            assert!(escaped.starts_with('\\'), "{code:#x}: {escaped}");
            assert!(!escaped.chars().any(is_unsafe), "{code:#x}: {escaped}");
        }
    }

    #[test]
    fn c1_controls_are_escaped() {
        // U+009B is CSI on terminals that honour 8-bit controls.
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("next\u{85}line"), "next\\u{85}line");
        for code in 0x80u32..=0x9f {
            let c = char::from_u32(code).unwrap();
            assert_eq!(escape(&c.to_string()), format!("\\u{{{code:x}}}"));
        }
        // The first printable character after C1 is left alone.
        assert_eq!(escape("\u{a0}"), "\u{a0}");
    }

    #[test]
    fn bidi_controls_and_separators_are_escaped() {
        assert_eq!(escape("abc\u{202e}gpj.exe"), "abc\\u{202e}gpj.exe");
        for code in (0x202au32..=0x202e).chain(0x2066..=0x2069) {
            let c = char::from_u32(code).unwrap();
            assert_eq!(escape(&c.to_string()), format!("\\u{{{code:x}}}"));
        }
        for code in [
            0x61c_u32, 0x200e, 0x200f, 0x2028, 0x2029, 0x200b, 0x2060, 0xfeff,
        ] {
            let c = char::from_u32(code).unwrap();
            assert_eq!(escape(&c.to_string()), format!("\\u{{{code:x}}}"));
        }
        // Joiners used by scripts and emoji stay.
        assert_eq!(escape("a\u{200d}b\u{200c}c"), "a\u{200d}b\u{200c}c");
    }

    #[test]
    fn backslashes_are_doubled_so_escapes_are_unambiguous() {
        assert_eq!(escape("C:\\temp"), "C:\\\\temp");
        // A typed-in `\n` and a real newline look different.
        assert_ne!(escape("\\n"), escape("\n"));
    }

    #[test]
    fn nothing_unsafe_survives() {
        let hostile: String = (0u32..0x3000)
            .chain([0xfeff, 0xfffe, 0xffff, 0x1_f600])
            .filter_map(char::from_u32)
            .collect();
        let escaped = escape(&hostile);
        assert!(!escaped.chars().any(is_unsafe));
        assert!(!escaped.chars().any(char::is_control));
    }

    #[test]
    fn quotes_are_escaped_and_cut() {
        assert_eq!(quote("ok", 10), "`ok`");
        assert_eq!(quote("a\nb", 10), "`a\\nb`");
        assert_eq!(quote(&"x".repeat(50), 5), "`xxxxx…`");
    }
}
