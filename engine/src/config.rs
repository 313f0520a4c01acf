//! Pipeline-file plumbing shared by every component config: `${ENV}`
//! interpolation, precise error locations (file, line, column, field) and
//! "did you mean" suggestions.
//!
//! Component configs are plain serde structs with `deny_unknown_fields`. The
//! pipeline loader parses the file once into a spanned tree
//! ([`toml::de::DeTable`]) and deserializes each component from its own
//! sub-tree with [`deserialize_spanned`], so every error carries the byte span
//! of the offending key or value; [`ConfigError::at`] turns that into a
//! line and column of the file as the user wrote it (before interpolation).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// A mistake in a pipeline file, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The pipeline file the mistake is in.
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// Dotted path of the field concerned, e.g. `sources.orders.topic`.
    pub field: Option<String>,
    /// What is wrong, for the user (without location or hint).
    pub message: String,
    /// A suggestion such as "did you mean `topic`?".
    pub hint: Option<String>,
}

impl ConfigError {
    /// An error not tied to a place in the file.
    pub fn general(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            field: None,
            message: message.into(),
            hint: None,
        }
    }

    /// An error at a byte offset of `source`.
    pub fn at(source: &SourceText, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = source.line_col(offset);
        ConfigError {
            file: source.path.clone(),
            line,
            column,
            field: None,
            message: message.into(),
            hint: None,
        }
    }

    /// The same error, naming the dotted path of the field concerned.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The same error with `hint` as its suggestion (None removes it).
    pub fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "in `{field}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The text of a pipeline file after `${VAR}` interpolation, with the map
/// back to offsets in the original text.
#[derive(Debug, Clone)]
pub struct SourceText {
    /// The pipeline file the text was read from.
    pub path: PathBuf,
    /// The file as the user wrote it; error locations refer to it.
    pub original: String,
    /// The text after interpolation, which is what gets parsed.
    pub text: String,
    /// `(offset in text, offset in original)` at the start of each segment.
    segments: Vec<(usize, usize)>,
}

impl SourceText {
    /// Interpolates `${NAME}` and `${NAME:-default}` from `lookup`; `$${`
    /// stands for a literal `${`. An unset variable without a default is an
    /// error naming it. Interpolation happens anywhere in the file, so a
    /// secret can be spliced into a connection string.
    pub fn interpolate(
        path: &Path,
        original: String,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut text = String::with_capacity(original.len());
        let mut segments = vec![(0, 0)];
        let bytes = original.as_bytes();
        let mut i = 0;
        let mut copied_from = 0;
        while i < bytes.len() {
            if bytes[i] == b'$' && original[i..].starts_with("$${") {
                text.push_str(&original[copied_from..i]);
                text.push_str("${");
                i += 3;
                copied_from = i;
                segments.push((text.len(), i));
                continue;
            }
            if bytes[i] == b'$' && original[i..].starts_with("${") {
                text.push_str(&original[copied_from..i]);
                let start = i;
                let Some(close) = original[i..].find('}') else {
                    let probe = SourceText::plain(path, original.clone());
                    return Err(ConfigError::at(
                        &probe,
                        start,
                        "unterminated `${` in the pipeline file",
                    ));
                };
                let inner = &original[i + 2..i + close];
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (inner, None),
                };
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                let probe = || SourceText::plain(path, original.clone());
                if !valid {
                    return Err(ConfigError::at(
                        &probe(),
                        start,
                        format!("`${{{inner}}}` is not a valid environment variable reference"),
                    ));
                }
                match lookup(name).or_else(|| default.map(str::to_string)) {
                    Some(v) => text.push_str(&v),
                    None => {
                        return Err(ConfigError::at(
                            &probe(),
                            start,
                            format!(
                                "environment variable `{name}` is not set \
                                 (set it, or write `${{{name}:-default}}`)"
                            ),
                        ))
                    }
                }
                i += close + 1;
                copied_from = i;
                segments.push((text.len(), i));
                continue;
            }
            i += 1;
        }
        text.push_str(&original[copied_from..]);
        Ok(SourceText {
            path: path.to_path_buf(),
            original,
            text,
            segments,
        })
    }

    /// A text used as is (no interpolation).
    pub fn plain(path: &Path, text: String) -> Self {
        SourceText {
            path: path.to_path_buf(),
            original: text.clone(),
            text,
            segments: vec![(0, 0)],
        }
    }

    /// Maps an offset of the interpolated text back to the original.
    pub fn original_offset(&self, offset: usize) -> usize {
        let idx = self.segments.partition_point(|&(t, _)| t <= offset);
        let (t, o) = self.segments[idx.saturating_sub(1)];
        o + (offset - t)
    }

    /// 1-based line and column of an offset of the interpolated text.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let off = self.original_offset(offset).min(self.original.len());
        let before = &self.original[..off];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(off, |nl| off - nl - 1) + 1;
        (line, col)
    }

    /// Parses the interpolated text into a spanned tree.
    pub fn parse(&self) -> Result<Spanned<DeTable<'_>>, ConfigError> {
        DeTable::parse(&self.text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            ConfigError::at(
                self,
                offset,
                format!("invalid TOML: {}", e.message().trim()),
            )
        })
    }
}

/// Deserializes a component config from its spanned sub-tree. `field_prefix`
/// names the table (e.g. `sources.orders`); unknown fields get a suggestion.
pub fn deserialize_spanned<T: DeserializeOwned>(
    source: &SourceText,
    field_prefix: &str,
    value: Spanned<DeValue<'_>>,
) -> Result<T, ConfigError> {
    let root_span = value.span();
    let tree = value.clone();
    T::deserialize(ValueDeserializer::from(value))
        .map_err(|e| toml_error(source, field_prefix, &tree, root_span, &e))
}

/// Like [`deserialize_spanned`], but reports every mistake it can find
/// instead of the first: after an error inside a field, that field is
/// taken out of the table and the rest is tried again, so a typo in one
/// field does not hide a bad value in the next. A field taken out is not
/// reported again as missing. Errors come in the order they were found.
pub fn deserialize_all<T: DeserializeOwned>(
    source: &SourceText,
    field_prefix: &str,
    value: Spanned<DeValue<'_>>,
) -> Result<T, Vec<ConfigError>> {
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    let mut tree = value;
    // Each round removes one key, so a table of n keys takes at most n + 1.
    loop {
        let root_span = tree.span();
        let attempt = T::deserialize(ValueDeserializer::from(tree.clone()));
        let e = match attempt {
            Ok(v) if errors.is_empty() => return Ok(v),
            Ok(_) => return Err(errors),
            Err(e) => e,
        };
        let missing = between(e.message(), "missing field `", "`").map(str::to_string);
        if let Some(m) = &missing {
            // Already reported: as a bad value, or as the unknown field
            // whose suggestion it is (`pth`: did you mean `path`?).
            let typo = did_you_mean(m, removed.iter().map(String::as_str)).is_some();
            if removed.contains(m) || typo {
                return Err(errors);
            }
        }
        errors.push(toml_error(source, field_prefix, &tree, root_span, &e));
        if missing.is_some() {
            // Reported once the rest of the table was read: nothing follows.
            return Err(errors);
        }
        // Retry without the innermost key the error is in (one entry of
        // `aggregates`, not all of them).
        let Some(offset) = e.span().map(|s| s.start) else {
            return Err(errors);
        };
        match remove_innermost(&mut tree, offset) {
            Some(k) => removed.push(k),
            None => return Err(errors),
        }
    }
}

/// Removes the innermost key of `tree` whose key or value holds `offset`;
/// returns its name.
fn remove_innermost(tree: &mut Spanned<DeValue<'_>>, offset: usize) -> Option<String> {
    let DeValue::Table(table) = tree.get_mut() else {
        return None;
    };
    let key = table
        .iter()
        .find(|(k, v)| k.span().contains(&offset) || v.span().contains(&offset))
        .map(|(k, v)| (k.get_ref().to_string(), v.span().contains(&offset)))?;
    if let (name, true) = &key {
        if let Some(value) = table.get_mut(name.as_str()) {
            if let Some(inner) = remove_innermost(value, offset) {
                return Some(inner);
            }
        }
    }
    table.remove(key.0.as_str());
    Some(key.0)
}

/// The span of the value at dotted `path` (e.g. `window.size`) in `tree`.
pub fn value_span(tree: &Spanned<DeValue<'_>>, path: &str) -> Option<Range<usize>> {
    let mut node = tree;
    for part in path.split('.') {
        let DeValue::Table(t) = node.get_ref() else {
            return None;
        };
        node = t.get(part)?;
    }
    Some(node.span())
}

/// The dotted path and value span of the first key named `name` anywhere
/// in `tree` (depth first, in file order).
pub fn find_key(tree: &Spanned<DeValue<'_>>, name: &str) -> Option<(String, Range<usize>)> {
    let DeValue::Table(t) = tree.get_ref() else {
        return None;
    };
    for (k, v) in t.iter() {
        let key = k.get_ref().to_string();
        if key == name {
            return Some((key, v.span()));
        }
    }
    for (k, v) in t.iter() {
        if let Some((inner, span)) = find_key(v, name) {
            return Some((format!("{}.{inner}", k.get_ref()), span));
        }
    }
    None
}

/// An error from a check beyond the shape of the table at `path` (e.g.
/// "window `size` must be positive"): located at the value of the first
/// field the message names in backticks that `tree` holds (`size` is found
/// in `window.size`), else at byte offset `fallback`.
pub fn error_at_named_field(
    source: &SourceText,
    path: &str,
    tree: &Spanned<DeValue<'_>>,
    fallback: usize,
    message: impl Into<String>,
) -> ConfigError {
    let message: String = message.into();
    let named = message
        .split('`')
        .skip(1)
        .step_by(2)
        .find_map(|field| find_key(tree, field));
    match named {
        Some((field, span)) => {
            ConfigError::at(source, span.start, message).with_field(format!("{path}.{field}"))
        }
        None => ConfigError::at(source, fallback, message).with_field(path),
    }
}

fn toml_error(
    source: &SourceText,
    field_prefix: &str,
    tree: &Spanned<DeValue<'_>>,
    root_span: Range<usize>,
    e: &toml::de::Error,
) -> ConfigError {
    let mut span = e.span().unwrap_or(root_span);
    let message = e.message().trim().to_string();
    let mut inner = key_path_at(tree, span.start).unwrap_or_default();
    // Some errors only carry the span of a whole table (those of internally
    // tagged enums such as `window = { type = "tumbling", size = "abc" }`):
    // narrow them to the key or value the message names in backticks.
    if let Some(node) = node_at(tree, &inner).filter(|n| n.span() == span) {
        let named = message
            .split('`')
            .skip(1)
            .step_by(2)
            .find_map(|token| find_key(node, token).or_else(|| find_string(node, token)));
        if let Some((found, found_span)) = named {
            span = found_span;
            inner = if inner.is_empty() {
                found
            } else {
                format!("{inner}.{found}")
            };
        }
    }
    let mut err = ConfigError::at(source, span.start, message.clone());
    let mut path = field_prefix.to_string();
    if !inner.is_empty() {
        path = format!("{field_prefix}.{inner}");
    }
    if let Some(unknown) = between(&message, "unknown field `", "`") {
        let expected = expected_names(&message);
        err.message = format!("unknown field `{unknown}`");
        err.hint = did_you_mean(unknown, expected.iter().map(String::as_str))
            .map(|s| format!("did you mean `{s}`?"))
            .or_else(|| {
                (!expected.is_empty()).then(|| format!("valid fields: {}", expected.join(", ")))
            });
        // The span is the unknown key itself; the path is its parent table.
        if let Some(p) = path.strip_suffix(&format!(".{unknown}")) {
            path = p.to_string();
        }
    } else if let Some(variant) = between(&message, "unknown variant `", "`") {
        let expected = expected_names(&message);
        err.message = format!("unknown value `{variant}`");
        err.hint = did_you_mean(variant, expected.iter().map(String::as_str))
            .map(|s| format!("did you mean `{s}`?"))
            .or_else(|| {
                (!expected.is_empty()).then(|| format!("expected one of: {}", expected.join(", ")))
            });
    }
    err.with_field(path)
}

/// The node at dotted `path` of `tree` (the tree itself for "").
fn node_at<'t, 'a>(tree: &'t Spanned<DeValue<'a>>, path: &str) -> Option<&'t Spanned<DeValue<'a>>> {
    let mut node = tree;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let DeValue::Table(t) = node.get_ref() else {
            return None;
        };
        node = t.get(part)?;
    }
    Some(node)
}

/// The dotted path and span of the first string value equal to `text` in
/// `tree` (depth first, in file order).
fn find_string(tree: &Spanned<DeValue<'_>>, text: &str) -> Option<(String, Range<usize>)> {
    let DeValue::Table(t) = tree.get_ref() else {
        return None;
    };
    for (k, v) in t.iter() {
        match v.get_ref() {
            DeValue::String(s) if s.as_ref() == text => {
                return Some((k.get_ref().to_string(), v.span()))
            }
            DeValue::Table(_) => {
                if let Some((inner, span)) = find_string(v, text) {
                    return Some((format!("{}.{inner}", k.get_ref()), span));
                }
            }
            _ => {}
        }
    }
    None
}

/// The dotted path of the deepest key in `tree` whose key or value span
/// contains `offset`.
fn key_path_at(tree: &Spanned<DeValue<'_>>, offset: usize) -> Option<String> {
    let DeValue::Table(table) = tree.get_ref() else {
        return Some(String::new());
    };
    for (key, value) in table.iter() {
        let in_key = key.span().contains(&offset);
        let in_value = value.span().contains(&offset);
        if in_key || in_value {
            let name = key.get_ref().to_string();
            return match key_path_at(value, offset) {
                Some(inner) if !inner.is_empty() && in_value => Some(format!("{name}.{inner}")),
                _ => Some(name),
            };
        }
    }
    Some(String::new())
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let s = text.find(start)? + start.len();
    let e = text[s..].find(end)? + s;
    Some(&text[s..e])
}

/// Names listed in backticks after "expected" in a serde message.
fn expected_names(message: &str) -> Vec<String> {
    let Some(pos) = message.find("expected") else {
        return Vec::new();
    };
    message[pos..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The candidate closest to `word` by edit distance, if it is close enough
/// to be a plausible typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.len() / 3).max(1) + usize::from(word.len() > 5);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Levenshtein distance (with adjacent transpositions counting as one edit).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2 = vec![0usize; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0usize; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Demo {
        topic: String,
        partitions: Option<u32>,
    }

    fn parse_demo(doc: &str) -> Result<Demo, ConfigError> {
        let src = SourceText::plain(Path::new("p.toml"), doc.to_string());
        let table = src.parse()?;
        let value = table.get_ref().get("sources").unwrap().clone();
        let DeValue::Table(t) = value.get_ref() else {
            panic!()
        };
        let demo = t.get("orders").unwrap().clone();
        deserialize_spanned(&src, "sources.orders", demo)
    }

    #[test]
    fn unknown_field_points_at_key_and_suggests() {
        let err = parse_demo("[sources.orders]\ntopc = \"x\"\n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 1));
        assert_eq!(err.field.as_deref(), Some("sources.orders"));
        assert_eq!(err.hint.as_deref(), Some("did you mean `topic`?"));
        let text = err.to_string();
        assert!(
            text.starts_with("p.toml:2:1: in `sources.orders`: unknown field `topc`"),
            "{text}"
        );
    }

    fn parse_demo_all(doc: &str) -> Result<Demo, Vec<ConfigError>> {
        let src = SourceText::plain(Path::new("p.toml"), doc.to_string());
        let table = src.parse().map_err(|e| vec![e])?;
        let DeValue::Table(t) = table.get_ref().get("sources").unwrap().get_ref() else {
            panic!()
        };
        deserialize_all(&src, "sources.orders", t.get("orders").unwrap().clone())
    }

    #[test]
    fn deserialize_all_reports_every_bad_field_once() {
        let errors =
            parse_demo_all("[sources.orders]\ntopc = \"x\"\npartitions = \"three\"\nextra = 1\n")
                .unwrap_err();
        let mut found: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        found.sort_unstable();
        // `topc` is reported as unknown (did you mean `topic`?), not also
        // `topic` as missing.
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0], (2, "unknown field `topc`"));
        assert_eq!(found[1].0, 3);
        assert_eq!(found[2], (4, "unknown field `extra`"));
        // A required field that is simply absent is reported.
        let errors = parse_demo_all("[sources.orders]\npartitions = 3\n").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("missing field `topic`"));
        assert!(parse_demo_all("[sources.orders]\ntopic = \"t\"\n").is_ok());
    }

    #[test]
    fn errors_of_checks_point_at_the_field_they_name() {
        let src = SourceText::plain(
            Path::new("p.toml"),
            "[t]\nwindow = { type = \"x\", size = \"0s\" }\n".into(),
        );
        let doc = src.parse().unwrap();
        let tree = doc.get_ref().get("t").unwrap();
        let e = error_at_named_field(&src, "t", tree, 0, "window `size` must be positive");
        assert_eq!((e.line, e.column), (2, 31));
        assert_eq!(e.field.as_deref(), Some("t.window.size"));
        let e = error_at_named_field(&src, "t", tree, 0, "no field named here");
        assert_eq!((e.line, e.column), (1, 1));
        assert_eq!(e.field.as_deref(), Some("t"));
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err =
            parse_demo("[sources.orders]\ntopic = \"x\"\npartitions = \"three\"\n").unwrap_err();
        assert_eq!((err.line, err.column), (3, 14));
        assert_eq!(err.field.as_deref(), Some("sources.orders.partitions"));
        assert!(err.message.contains("expected u32"), "{}", err.message);
    }

    #[test]
    fn interpolation_maps_offsets_back() {
        let doc = "a = \"${LONG_VALUE}\"\nb = ${N:-3}\nc = \"$${literal}\"\n";
        let src = SourceText::interpolate(Path::new("p.toml"), doc.into(), |n| {
            (n == "LONG_VALUE").then(|| "a much longer replacement value".to_string())
        })
        .unwrap();
        assert_eq!(
            src.text,
            "a = \"a much longer replacement value\"\nb = 3\nc = \"${literal}\"\n"
        );
        let b_offset = src.text.find("b =").unwrap();
        assert_eq!(src.line_col(b_offset), (2, 1));
        let c_offset = src.text.find("c =").unwrap();
        assert_eq!(src.line_col(c_offset), (3, 1));
    }

    #[test]
    fn unset_variable_is_an_error_naming_it() {
        let err = SourceText::interpolate(Path::new("p.toml"), "x = \"${NOPE}\"".into(), |_| None)
            .unwrap_err();
        assert!(err.message.contains("`NOPE` is not set"), "{}", err.message);
        assert_eq!((err.line, err.column), (1, 6));
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("topc", ["topic", "brokers"]), Some("topic"));
        assert_eq!(
            did_you_mean("tumbeling", ["tumbling", "hopping", "session"]),
            Some("tumbling")
        );
        assert_eq!(did_you_mean("xyz", ["topic", "brokers"]), None);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }
}
