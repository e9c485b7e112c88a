//! Bytes → file structs, with errors a person can act on: a key path, a line, and no parser
//! internals (no Rust type names, no path printed twice).
//!
//! Order: byte order mark stripped → UTF-8 and control characters checked (with a line) →
//! YAML syntax (duplicate keys reported at their own line) → schema with key paths.

use std::{collections::HashSet, fmt};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Separates a duplicate key's message from its key path inside a serde error.
const PATH_MARK: char = '\u{1}';

use super::{error::ConfigError, file::FileConfig};

/// Parse a config file's bytes.
pub fn parse_bytes(bytes: &[u8]) -> Result<FileConfig, ConfigError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_col(&bytes[..e.valid_up_to()]);
        let bad = bytes.get(e.valid_up_to()).copied().unwrap_or(0);
        ConfigError::Encoding {
            line,
            column,
            message: format!("byte 0x{bad:02X} is not valid UTF-8; save the file as UTF-8"),
        }
    })?;
    parse(text)
}

/// Parse config text (a leading byte order mark is ignored).
pub fn parse(text: &str) -> Result<FileConfig, ConfigError> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    check_characters(text)?;
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(ConfigError::Schema {
            path: "(top level)".into(),
            line: None,
            column: None,
            message: "the file is empty; it needs listeners, routes and pools".into(),
        });
    }
    // Syntax first, so a broken document is reported as such rather than as a schema error
    // at whatever key the parser had reached. `IgnoredAny` accepts any scalar, so a number
    // too large for the schema is reported by the schema pass with its key path.
    if let Err(e) = Checked(String::new()).deserialize(serde_yaml::Deserializer::from_str(text)) {
        return Err(syntax_error(text, &e));
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize::<_, FileConfig>(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = location(&inner);
        let path = if path.is_empty() || path == "." {
            "(top level)".into()
        } else {
            path
        };
        ConfigError::Schema {
            path,
            line,
            column,
            message: humane(&strip_location(&inner.to_string())),
        }
    })
}

/// Line and column (1-based) just after `before`.
fn line_col(before: &[u8]) -> (usize, usize) {
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line, column)
}

/// Control characters other than tab and line breaks (YAML forbids them; say where).
fn check_characters(text: &str) -> Result<(), ConfigError> {
    let Some((at, c)) = text
        .char_indices()
        .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    else {
        return Ok(());
    };
    let (line, column) = line_col(&text.as_bytes()[..at]);
    Err(ConfigError::Encoding {
        line,
        column,
        message: format!("control character U+{:04X} is not allowed", c as u32),
    })
}

fn location(e: &serde_yaml::Error) -> (Option<usize>, Option<usize>) {
    match e.location() {
        Some(l) => (Some(l.line()), Some(l.column())),
        None => (None, None),
    }
}

/// serde_yaml appends " at line X column Y"; the location is printed our own way.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// A syntax error, or a duplicate key reported at the duplicate's own line.
fn syntax_error(text: &str, e: &serde_yaml::Error) -> ConfigError {
    let (line, column) = location(e);
    let msg = strip_location(&e.to_string());
    if let Some((head, path)) = msg.split_once(PATH_MARK) {
        // serde_yaml places the error at the start of the mapping; find the key itself.
        let key = head
            .rsplit_once("duplicate key ")
            .map_or(head, |(_, k)| k)
            .trim_matches('"')
            .to_string();
        let found = line
            .zip(column)
            .and_then(|(l, c)| find_duplicate(text, l, c, &key));
        return ConfigError::DuplicateKey {
            path: path.to_string(),
            key,
            first_line: found.map(|f| f.0 .0),
            line: found.map(|f| f.1 .0).or(line),
            column: found.map(|f| f.1 .1).or(column),
        };
    }
    ConfigError::Syntax {
        line,
        column,
        message: split_path(&msg).1.to_string(),
    }
}

/// serde_yaml prefixes messages with the key path it was at ("routes[0].match: ..."); the
/// path is printed once, by us.
fn split_path(msg: &str) -> (Option<&str>, &str) {
    if let Some((p, rest)) = msg.split_once(": ") {
        let looks_like_path = !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.[]".contains(&b));
        if looks_like_path {
            return (Some(p), rest);
        }
    }
    (None, msg)
}

/// Where `key` occurs the first and the second time in the mapping that starts at
/// (`line`, `column`): on that line (a flow mapping), then on later lines at that column
/// (a block mapping) until the mapping ends.
fn find_duplicate(
    text: &str,
    line: usize,
    column: usize,
    key: &str,
) -> Option<((usize, usize), (usize, usize))> {
    let lines: Vec<&str> = text.lines().collect();
    let is_key = |s: &str| {
        [
            format!("{key}:"),
            format!("\"{key}\":"),
            format!("'{key}':"),
        ]
        .iter()
        .any(|k| s.starts_with(k.as_str()))
    };
    let mut found = Vec::new();
    let first: Vec<char> = lines.get(line.checked_sub(1)?)?.chars().collect();
    let tail: String = first.iter().skip(column - 1).collect();
    let mut prev = '{';
    for (i, ch) in tail.char_indices() {
        if (i == 0 || matches!(prev, '{' | ',' | ' ')) && is_key(&tail[i..]) {
            found.push((line, column + tail[..i].chars().count()));
        }
        prev = ch;
    }
    for (n, l) in lines.iter().enumerate().skip(line) {
        if found.len() >= 2 {
            break;
        }
        let indent = l.chars().take_while(|c| *c == ' ').count();
        let body = l.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if indent + 1 < column {
            break;
        }
        if indent + 1 == column && is_key(body) {
            found.push((n + 1, column));
        }
    }
    (found.len() >= 2).then(|| (found[0], found[1]))
}

/// The syntax pass: walks the whole document, accepts any scalar, and refuses a mapping
/// that repeats a key (serde would keep the last one silently). Carries the key path.
struct Checked(String);

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let mut i = 0;
        while a
            .next_element_seed(Checked(format!("{}[{i}]", self.0)))?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(k) = a.next_key::<KeyText>()? {
            let path = if self.0.is_empty() {
                k.0.clone()
            } else {
                format!("{}.{}", self.0, k.0)
            };
            if !seen.insert(k.0.clone()) {
                return Err(de::Error::custom(format!(
                    "duplicate key {:?}{PATH_MARK}{path}",
                    k.0
                )));
            }
            a.next_value_seed(Checked(path))?;
        }
        Ok(())
    }
}

/// A mapping key as text (keys may be any scalar in YAML).
struct KeyText(String);

impl<'de> de::Deserialize<'de> for KeyText {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u128<E>(self, v: u128) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<KeyText, E> {
                Ok(KeyText("null".into()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<KeyText, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(KeyText("[…]".into()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<KeyText, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(KeyText("{…}".into()))
            }
        }
        d.deserialize_any(V)
    }
}

/// serde's wording → the config's: keys, not fields; integers, not i64; no type names.
fn humane(msg: &str) -> String {
    let (_, msg) = split_path(msg);
    let msg = msg.to_string();
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        return match rest.split_once(", expected ") {
            Some((k, exp)) => format!("unknown key {k}, expected {}", list(exp)),
            None => format!("unknown key {rest}"),
        };
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        return match rest.split_once(", expected ") {
            Some((v, exp)) => format!("unknown value {v}, expected {}", list(exp)),
            None => format!("unknown value {rest}"),
        };
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        return format!("missing key {rest}");
    }
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            if let Some(n) = found
                .strip_prefix("integer `")
                .and_then(|f| f.split_once("` as "))
                .map(|(n, _)| n)
            {
                return format!("number {n} is too large");
            }
            return format!("expected {}, found {found}", type_name(expected));
        }
    }
    if let Some(rest) = msg.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!("expected {}, found {found}", type_name(expected));
        }
    }
    msg
}

/// "one of `a`, `b`" as written; "`a` or `b`" stays.
fn list(expected: &str) -> String {
    expected.replace('`', "")
}

fn type_name(expected: &str) -> String {
    if expected.starts_with("struct ") || expected.starts_with("a map") {
        return "a mapping of keys".into();
    }
    match expected {
        "a sequence" => "a list".into(),
        "i64" | "i32" | "u8" | "u16" | "u32" | "u64" | "usize" => "an integer".into(),
        "u16 integer" => "an integer".into(),
        "a boolean" | "bool" => "true or false".into(),
        "f64" | "f32" => "a number".into(),
        "a string" => "a string".into(),
        e => e.replace('`', ""),
    }
}
