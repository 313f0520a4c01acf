//! Splitting a request body into events, validating each one before
//! anything is journaled: one JSON object, a JSON array of objects, or
//! NDJSON (one object per line). Pure functions, no I/O.

use std::ops::Range;

use memchr::memchr;
use sluice_engine::json::Projection;

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// The client said NDJSON (`Content-Type: application/x-ndjson`...).
    Ndjson,
    /// Work it out from the content.
    Detect,
}

/// Where a rejected event is, for the error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Location {
    /// 1-based line of the body.
    Line(usize),
    /// 0-based element of a JSON array.
    Index(usize),
}

/// Why a body was refused (nothing of it is journaled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// 400 (bad JSON) or 413 (an event over the size limit).
    pub status: u16,
    pub message: String,
    pub at: Option<Location>,
}

impl Rejection {
    fn bad(message: impl Into<String>, at: Option<Location>) -> Self {
        Rejection {
            status: 400,
            message: message.into(),
            at,
        }
    }
}

/// Validates events: a projection with no paths checks that a document is
/// one well-formed JSON object without building any value.
pub(crate) struct Validator {
    objects: Projection,
    max_event_bytes: usize,
}

impl Validator {
    pub(super) fn new(max_event_bytes: usize) -> Self {
        Validator {
            objects: Projection::new(&[]),
            max_event_bytes,
        }
    }

    /// The events of `body` as byte ranges, or why the body is refused.
    pub(super) fn split(&self, body: &[u8], framing: Framing) -> Result<Vec<Range<usize>>, Rejection> {
        let Some(first) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
            return Err(Rejection::bad(
                "the request body is empty: send a JSON object, an array of objects, or NDJSON",
                None,
            ));
        };
        if framing == Framing::Ndjson {
            return self.ndjson(body);
        }
        if body[first] == b'[' {
            return self.array(body, first);
        }
        let end = trim_end(body);
        match self.check(&body[first..end]) {
            Ok(()) => Ok(std::iter::once(first..end).collect()),
            Err(single) => {
                // Several objects one per line: NDJSON without its content type.
                let first_line_end = memchr(b'\n', &body[first..]).map_or(end, |i| first + i);
                let line = &body[first..trim_end(&body[..first_line_end])];
                if first_line_end < end && self.check(line).is_ok() {
                    return self.ndjson(body);
                }
                let line_no = line_of(body, first + single.offset);
                Err(Rejection {
                    status: if single.too_large { 413 } else { 400 },
                    message: single.message,
                    at: Some(Location::Line(line_no)),
                })
            }
        }
    }

    fn check(&self, event: &[u8]) -> Result<(), Checked> {
        if event.len() > self.max_event_bytes {
            return Err(Checked {
                offset: 0,
                message: format!(
                    "event of {} bytes exceeds the limit of {} bytes (max_event_bytes)",
                    event.len(),
                    self.max_event_bytes
                ),
                too_large: true,
            });
        }
        self.objects.decode(event, &mut []).map_err(|e| Checked {
            offset: e.offset,
            message: e.to_string(),
            too_large: false,
        })
    }

    fn ndjson(&self, body: &[u8]) -> Result<Vec<Range<usize>>, Rejection> {
        let mut events = Vec::new();
        let mut start = 0;
        let mut line_no = 0;
        while start < body.len() {
            line_no += 1;
            let end = memchr(b'\n', &body[start..]).map_or(body.len(), |i| start + i);
            let line = &body[start..end];
            if let Some(lead) = line.iter().position(|b| !b.is_ascii_whitespace()) {
                let range = start + lead..start + trim_end(line);
                if let Err(c) = self.check(&body[range.clone()]) {
                    return Err(c.reject(format!("line {line_no}"), Location::Line(line_no)));
                }
                events.push(range);
            }
            start = end + 1;
        }
        Ok(events)
    }

    /// A JSON array at `open` (`[`): each top-level element must be an object.
    fn array(&self, body: &[u8], open: usize) -> Result<Vec<Range<usize>>, Rejection> {
        let mut events = Vec::new();
        let mut pos = skip_ws(body, open + 1);
        if body.get(pos) == Some(&b']') {
            return trailing(body, pos + 1).map(|()| events);
        }
        loop {
            let index = events.len();
            let at = Some(Location::Index(index));
            let Some((end, closer)) = element_end(body, pos) else {
                return Err(Rejection::bad(
                    format!("element {index}: the array is not closed (unbalanced brackets or an unterminated string)"),
                    at,
                ));
            };
            let range = pos..pos + trim_end(&body[pos..end]);
            if range.is_empty() {
                return Err(Rejection::bad(
                    format!("element {index}: empty element (a trailing or doubled comma?)"),
                    at,
                ));
            }
            if let Err(c) = self.check(&body[range.clone()]) {
                return Err(c.reject(format!("element {index}"), Location::Index(index)));
            }
            events.push(range);
            if closer == b']' {
                return trailing(body, end + 1).map(|()| events);
            }
            pos = skip_ws(body, end + 1);
        }
    }
}

/// A failed check of one event.
struct Checked {
    offset: usize,
    message: String,
    too_large: bool,
}

impl Checked {
    fn reject(self, what: String, at: Location) -> Rejection {
        Rejection {
            status: if self.too_large { 413 } else { 400 },
            message: format!("{what}: {}", self.message),
            at: Some(at),
        }
    }
}

/// Where the array element starting at `start` ends: the index of the
/// `,` or `]` closing it at the top level, and which one it is. Strings
/// and nesting are skipped; the element itself is validated afterwards.
fn element_end(body: &[u8], start: usize) -> Option<(usize, u8)> {
    let mut depth = 0usize;
    let mut i = start;
    while i < body.len() {
        match body[i] {
            b'"' => {
                i += 1;
                while i < body.len() && body[i] != b'"' {
                    i += if body[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' => depth = depth.checked_sub(1)?,
            b']' if depth == 0 => return Some((i, b']')),
            b']' => depth -= 1,
            b',' if depth == 0 => return Some((i, b',')),
            _ => {}
        }
        i += 1;
    }
    None
}

fn trailing(body: &[u8], from: usize) -> Result<(), Rejection> {
    if skip_ws(body, from) == body.len() {
        Ok(())
    } else {
        Err(Rejection::bad(
            format!(
                "trailing characters after the JSON array, on line {}",
                line_of(body, skip_ws(body, from))
            ),
            None,
        ))
    }
}

fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while i < body.len() && body[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Length of `s` without trailing whitespace (`\r` included).
fn trim_end(s: &[u8]) -> usize {
    s.iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1)
}

/// The 1-based line holding byte `offset`.
fn line_of(body: &[u8], offset: usize) -> usize {
    1 + body[..offset.min(body.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}
