//! Rendering of command results: `--format json` prints the API's JSON as is; text output is a
//! short human form per command.

use crate::cli::args::Format;

pub fn json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("json serializes"));
}

/// Prints `value` as JSON, or the text that `text` renders from it.
pub fn print(format: Format, value: &serde_json::Value, text: impl FnOnce(&serde_json::Value) -> String) {
    match format {
        Format::Json => json(value),
        Format::Text => print!("{}", text(value)),
    }
}

/// Prints the daemon's reply as received (`raw`) for `--format json`, or the text that `text`
/// renders from the same reply read as its type (`typed`).
pub fn show<T>(format: Format, raw: &serde_json::Value, typed: &T, text: impl FnOnce(&T) -> String) {
    match format {
        Format::Json => json(raw),
        Format::Text => print!("{}", text(typed)),
    }
}

/// An optional field as text: `-` when absent, as [`s`] renders a JSON null.
pub fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_owned(), T::to_string)
}

/// A plain table with left-aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub fn s(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
