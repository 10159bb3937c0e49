//! What the commands print: tables and JSON, with one escaping function for every cell.
//!
//! Anything a table shows may come from someone else (a name, an address, a user agent, a
//! token's claims, a row written by an older version), so no cell reaches the terminal raw.

use std::fmt;

use serde::Serialize;

use crate::domain::is_hidden_or_control;

/// Text for a terminal: control characters (ESC, CR, ...), format characters (bidirectional
/// overrides such as U+202E, zero-width spaces) and line or paragraph separators shown as
/// `\u{202e}` escapes, so stored text cannot move the cursor, clear the screen, hide itself or
/// reorder what an admin reads. Everything else, accents and other scripts included, is kept.
pub(crate) fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if is_hidden_or_control(c) {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// A table in the house style whose every cell, header included, goes through [`printable`]:
/// the only table type the commands print.
pub(crate) struct Table(comfy_table::Table);

impl Table {
    pub(crate) fn new() -> Table {
        let mut table = comfy_table::Table::new();
        table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
        Table(table)
    }

    pub(crate) fn set_header<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.0.set_header(escaped(cells));
    }

    pub(crate) fn add_row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.0.add_row(escaped(cells));
    }
}

fn escaped<S: AsRef<str>>(cells: impl IntoIterator<Item = S>) -> Vec<String> {
    cells
        .into_iter()
        .map(|cell| printable(cell.as_ref()))
        .collect()
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Pretty JSON for `--format json`, with the same characters as [`printable`] written as
/// `\uXXXX` escapes: the same JSON to a parser, but safe on a terminal. serde_json escapes only
/// U+0000..U+001F; DEL, the C1 controls, U+202E or U+2028 would otherwise be printed raw.
pub(crate) fn to_json(value: &impl Serialize) -> serde_json::Result<String> {
    let text = serde_json::to_string_pretty(value)?;
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        // Outside strings JSON has only ASCII, and inside them serde escaped what is below
        // U+0020: a raw character below U+007F here is structure (a newline of the layout).
        if c >= '\u{7f}' && is_hidden_or_control(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                shown.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            shown.push(c);
        }
    }
    Ok(shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn control_characters_and_bidi_overrides_are_escaped_for_the_terminal() {
        assert_eq!(printable("ok é 日本"), "ok é 日本");
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(
            printable("x\r\ny\u{7f}\u{9b}"),
            "x\\u{d}\\u{a}y\\u{7f}\\u{9b}"
        );
        assert_eq!(printable("\u{202e}gnp.exe"), "\\u{202e}gnp.exe");
    }

    #[test]
    fn invisible_characters_and_separators_are_escaped_for_the_terminal() {
        assert_eq!(
            printable("Ad\u{202e}min\u{200b}\u{2028}\u{2029}\u{2066}\u{feff}"),
            "Ad\\u{202e}min\\u{200b}\\u{2028}\\u{2029}\\u{2066}\\u{feff}"
        );
    }

    #[test]
    fn every_cell_of_a_table_is_escaped_header_included() {
        let mut table = Table::new();
        table.set_header(["na\u{202e}me", "email"]);
        table.add_row(["Ad\u{202e}min", "root\u{2028}@example.test"]);
        let shown = table.to_string();
        for raw in ['\u{202e}', '\u{2028}'] {
            assert!(!shown.contains(raw), "{shown}");
        }
        assert!(shown.contains("Ad\\u{202e}min"), "{shown}");
        assert!(shown.contains("root\\u{2028}@example.test"), "{shown}");
        assert!(shown.contains("na\\u{202e}me"), "{shown}");
    }

    #[test]
    fn json_output_escapes_the_same_characters_and_parses_to_the_same_value() {
        let value = json!({
            "name": "Ad\u{202e}min\u{2028}\u{7f}\u{9b}\u{e0041} é",
            "list": ["a\nb", 1],
        });
        let text = to_json(&value).unwrap();
        for raw in ['\u{202e}', '\u{2028}', '\u{7f}', '\u{9b}', '\u{e0041}'] {
            assert!(!text.contains(raw), "{raw:?} in {text}");
        }
        assert!(text.contains("\\u202e"), "{text}");
        assert!(text.contains(" é"), "{text}");
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, value);
    }
}
