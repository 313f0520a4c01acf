//! Key and field templates: literal text with `{field}` / `{a.b}`
//! placeholders filled from the record (`{{` and `}}` are literal braces).
//! Parsed once when the pipeline file is loaded, so a malformed template is
//! a config error with a line number, not a runtime surprise.

use std::fmt;

use serde::{Deserialize, Serialize};
use sluice_engine::json::write_value;
use sluice_engine::value::{parse_path, Str, Value};

/// A parsed template such as `country:counts:{window_start}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(Vec<Str>),
}

/// Why a template could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("`{{` at byte {0} is never closed (write `{{{{` for a literal brace)")]
    Unclosed(usize),
    #[error("unmatched `}}` at byte {0} (write `}}}}` for a literal brace)")]
    Unmatched(usize),
    #[error("empty placeholder `{{}}` at byte {0}: name a record field, e.g. `{{country}}`")]
    Empty(usize),
    #[error("the template is empty")]
    Blank,
}

/// Why a record could not fill a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("field `{0}` used in `{1}` is missing or null in the record")]
    Missing(String, String),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Blank);
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::Unmatched(at)),
                '{' => {
                    let rest = &text[at + 1..];
                    let close = rest.find('}').ok_or(TemplateError::Unclosed(at))?;
                    let name = rest[..close].trim();
                    if name.is_empty() {
                        return Err(TemplateError::Empty(at));
                    }
                    if name.contains('{') {
                        return Err(TemplateError::Unclosed(at));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(parse_path(name)));
                    // skip the placeholder's characters
                    while chars.peek().is_some_and(|&(i, _)| i <= at + 1 + close) {
                        chars.next();
                    }
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            text: text.to_string(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True if the template has no placeholders.
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// Fills the template from `record` into `out` (cleared first).
    /// Strings are inserted as they are, numbers and booleans as JSON,
    /// objects and arrays as compact JSON; a missing or null field is an
    /// error.
    pub fn render_into(&self, record: &Value, out: &mut String) -> Result<(), RenderError> {
        out.clear();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Field(path) => {
                    let v = record.get_path(path);
                    if !push_scalar(v, out) {
                        return Err(RenderError::Missing(path.join("."), self.text.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn render(&self, record: &Value) -> Result<String, RenderError> {
        let mut s = String::new();
        self.render_into(record, &mut s)?;
        Ok(s)
    }
}

/// Appends a value as text: strings raw, everything else as JSON. Returns
/// false for missing and null values (nothing is appended).
pub(super) fn push_scalar(v: &Value, out: &mut String) -> bool {
    match v {
        Value::Missing | Value::Null => false,
        Value::Str(s) => {
            out.push_str(s);
            true
        }
        other => {
            let mut buf = Vec::with_capacity(16);
            write_value(&mut buf, other);
            out.push_str(&String::from_utf8_lossy(&buf));
            true
        }
    }
}

impl TryFrom<String> for Template {
    type Error = TemplateError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Template::parse(&s)
    }
}

impl From<Template> for String {
    fn from(t: Template) -> String {
        t.text
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
