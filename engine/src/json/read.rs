//! The byte-level reader shared by the full parser and the projection
//! decoder: whitespace, strings (with UTF-8 and escape validation), numbers,
//! literals, and validating skips of whole subtrees.
//!
//! Everything that decides whether a document is accepted lives here, so
//! `parse_value` and `Projection::decode` accept exactly the same inputs.

use super::error::{msg, JsonError};
use crate::value::{Str, Value};

/// Maximum number of nested arrays/objects; one more is an error.
pub(crate) const MAX_DEPTH: usize = 128;

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit of every byte of `x` that is `"`, `\` or a control character
/// (< 0x20). Bits above the lowest flagged byte may be false positives, but
/// the lowest set bit is always exact, which is all the scanner uses.
#[inline(always)]
fn special_mask(x: u64) -> u64 {
    let q = x ^ (LO * b'"' as u64);
    let b = x ^ (LO * b'\\' as u64);
    let zq = q.wrapping_sub(LO) & !q;
    let zb = b.wrapping_sub(LO) & !b;
    let ctl = x.wrapping_sub(LO * 0x20) & !x;
    (zq | zb | ctl) & HI
}

/// A string token as found in the input.
pub(crate) enum RawStr<'a> {
    /// No escapes: the content bytes (already validated as UTF-8); the reader
    /// is positioned after the closing quote.
    Plain(&'a [u8]),
    /// The content starts at `start` and contains an escape; the reader is
    /// positioned at the first backslash. Finish with [`Reader::finish_escaped`].
    Escaped { start: usize },
}

/// The shape of a scanned number.
struct NumberText {
    start: usize,
    neg: bool,
    /// The integer digits' value; exact if `int_digits <= 19` (and only
    /// computed when building values).
    mant: u64,
    int_digits: usize,
    integral: bool,
    has_exp: bool,
}

/// A cursor over one input document.
pub(crate) struct Reader<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// An error at an explicit offset.
    #[cold]
    #[inline(never)]
    pub(crate) fn err_at(&self, offset: usize, message: &'static str) -> JsonError {
        JsonError::new(offset, message)
    }

    /// An error for the byte at the cursor: "unexpected end of input" when
    /// there is none, otherwise `message`.
    #[cold]
    #[inline(never)]
    pub(crate) fn unexpected(&self, message: &'static str) -> JsonError {
        if self.pos >= self.bytes.len() {
            JsonError::new(self.bytes.len(), msg::EOF)
        } else {
            JsonError::new(self.pos, message)
        }
    }

    #[inline(always)]
    pub(crate) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Skips JSON whitespace (space, tab, LF, CR).
    #[inline(always)]
    pub(crate) fn skip_ws(&mut self) {
        while let Some(&b) = self.bytes.get(self.pos) {
            if b > b' ' || !(b == b' ' || b == b'\n' || b == b'\r' || b == b'\t') {
                break;
            }
            self.pos += 1;
        }
    }

    /// Requires that only whitespace remains.
    pub(crate) fn finish(&mut self) -> Result<(), JsonError> {
        self.skip_ws();
        if self.pos < self.bytes.len() {
            return Err(self.err_at(self.pos, msg::TRAILING));
        }
        Ok(())
    }

    /// Skips whitespace, then consumes `:` or fails.
    #[inline(always)]
    pub(crate) fn colon(&mut self) -> Result<(), JsonError> {
        self.skip_ws();
        if self.peek() == Some(b':') {
            self.pos += 1;
            self.skip_ws();
            Ok(())
        } else {
            Err(self.unexpected(msg::EXPECTED_COLON))
        }
    }

    /// At the start of an object member (after `{`+ws or `,`+ws): consumes
    /// the opening quote of the key. A `}` here can only follow a comma.
    #[inline(always)]
    pub(crate) fn key_quote(&mut self) -> Result<(), JsonError> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                Ok(())
            }
            Some(b'}') => Err(self.err_at(self.pos, msg::TRAILING_COMMA_OBJ)),
            _ => Err(self.unexpected(msg::EXPECTED_KEY)),
        }
    }

    /// After an object member: skips whitespace and consumes `,` (returning
    /// true, followed by whitespace) or `}` (returning false).
    #[inline(always)]
    pub(crate) fn object_sep(&mut self) -> Result<bool, JsonError> {
        self.skip_ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                self.skip_ws();
                Ok(true)
            }
            Some(b'}') => {
                self.pos += 1;
                Ok(false)
            }
            _ => Err(self.unexpected(msg::EXPECTED_OBJ_SEP)),
        }
    }

    /// After an array element: consumes `,` (returning true; a following
    /// `]` is a trailing-comma error) or `]` (returning false).
    #[inline(always)]
    pub(crate) fn array_sep(&mut self) -> Result<bool, JsonError> {
        self.skip_ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(b']') {
                    return Err(self.err_at(self.pos, msg::TRAILING_COMMA_ARR));
                }
                Ok(true)
            }
            Some(b']') => {
                self.pos += 1;
                Ok(false)
            }
            _ => Err(self.unexpected(msg::EXPECTED_ARR_SEP)),
        }
    }

    /// Checks the depth budget before opening a container at `depth`
    /// (the number of containers already open around it).
    #[inline(always)]
    pub(crate) fn enter(&self, depth: usize) -> Result<(), JsonError> {
        if depth >= MAX_DEPTH {
            Err(self.err_at(self.pos, msg::TOO_DEEP))
        } else {
            Ok(())
        }
    }

    // ---------------------------------------------------------------- strings

    /// Scans unescaped string content from the cursor up to the next `"` or
    /// `\`, which is left at the cursor and returned. Rejects control
    /// characters, end of input and invalid UTF-8 in the scanned run.
    #[inline(always)]
    fn scan_run(&mut self) -> Result<u8, JsonError> {
        let bytes = self.bytes;
        let start = self.pos;
        let mut i = start;
        let mut high = 0u64;
        loop {
            if let Some(chunk) = bytes.get(i..).and_then(|s| s.first_chunk::<8>()) {
                let x = u64::from_le_bytes(*chunk);
                let m = special_mask(x);
                if m == 0 {
                    high |= x & HI;
                    i += 8;
                    continue;
                }
                let lowest = m & m.wrapping_neg();
                high |= x & HI & (lowest - 1);
                i += (m.trailing_zeros() / 8) as usize;
                break;
            }
            // Fewer than 8 bytes left.
            match bytes.get(i) {
                Some(&b) if b != b'"' && b != b'\\' && b >= 0x20 => {
                    high |= (b & 0x80) as u64;
                    i += 1;
                }
                _ => break,
            }
        }
        self.pos = i;
        let stop = match bytes.get(i) {
            Some(&b) if b == b'"' || b == b'\\' => b,
            Some(_) => return Err(self.err_at(i, msg::CONTROL_CHAR)),
            None => return Err(self.err_at(i, msg::EOF)),
        };
        if high != 0 {
            if let Err(e) = std::str::from_utf8(&bytes[start..i]) {
                return Err(self.err_at(start + e.valid_up_to(), msg::INVALID_UTF8));
            }
        }
        Ok(stop)
    }

    /// Reads the string whose opening quote was just consumed, without
    /// decoding escapes (see [`RawStr`]).
    #[inline(always)]
    pub(crate) fn read_str_raw(&mut self) -> Result<RawStr<'a>, JsonError> {
        let start = self.pos;
        if self.scan_run()? == b'"' {
            let raw = &self.bytes[start..self.pos];
            self.pos += 1;
            Ok(RawStr::Plain(raw))
        } else {
            Ok(RawStr::Escaped { start })
        }
    }

    /// Completes a [`RawStr::Escaped`] string, appending its decoded content
    /// (from `start`) to `out`. Leaves the cursor after the closing quote.
    pub(crate) fn finish_escaped(&mut self, start: usize, out: &mut Str) -> Result<(), JsonError> {
        out.push_str(self.run_str(start, self.pos)?);
        loop {
            // At a backslash.
            out.push(self.read_escape()?);
            let run = self.pos;
            let stop = self.scan_run()?;
            out.push_str(self.run_str(run, self.pos)?);
            if stop == b'"' {
                self.pos += 1;
                return Ok(());
            }
        }
    }

    /// Skips the string whose opening quote was just consumed, validating it.
    #[inline(always)]
    pub(crate) fn skip_str(&mut self) -> Result<(), JsonError> {
        loop {
            if self.scan_run()? == b'"' {
                self.pos += 1;
                return Ok(());
            }
            self.read_escape()?;
        }
    }

    /// Reads the string whose opening quote was just consumed as a [`Str`].
    #[inline(always)]
    pub(crate) fn read_str(&mut self) -> Result<Str, JsonError> {
        let start = self.pos;
        match self.read_str_raw()? {
            RawStr::Plain(raw) => Ok(Str::from(self.run_str(start, start + raw.len())?)),
            RawStr::Escaped { start } => {
                let mut s = Str::default();
                self.finish_escaped(start, &mut s)?;
                Ok(s)
            }
        }
    }

    /// [`read_str`](Self::read_str) into `out`, replacing its content but
    /// keeping its buffer.
    #[inline(always)]
    pub(crate) fn read_str_into(&mut self, out: &mut Str) -> Result<(), JsonError> {
        let start = self.pos;
        out.clear();
        match self.read_str_raw()? {
            RawStr::Plain(raw) => {
                out.push_str(self.run_str(start, start + raw.len())?);
                Ok(())
            }
            RawStr::Escaped { start } => self.finish_escaped(start, out),
        }
    }

    /// The already validated run `start..end` as `&str`.
    #[inline(always)]
    fn run_str(&self, start: usize, end: usize) -> Result<&'a str, JsonError> {
        let bytes: &'a [u8] = self.bytes;
        std::str::from_utf8(&bytes[start..end])
            .map_err(|e| self.err_at(start + e.valid_up_to(), msg::INVALID_UTF8))
    }

    /// Decodes the escape sequence at the cursor (which is at a backslash).
    #[cold]
    fn read_escape(&mut self) -> Result<char, JsonError> {
        let at = self.pos;
        let Some(&e) = self.bytes.get(at + 1) else {
            return Err(self.err_at(self.bytes.len(), msg::EOF));
        };
        self.pos = at + 2;
        let c = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                let cp = match hi {
                    0xD800..=0xDBFF => {
                        match (self.bytes.get(self.pos), self.bytes.get(self.pos + 1)) {
                            (Some(b'\\'), Some(b'u')) => {}
                            (None, _) | (Some(b'\\'), None) => {
                                return Err(self.err_at(self.bytes.len(), msg::EOF))
                            }
                            _ => return Err(self.err_at(at, msg::LONE_SURROGATE)),
                        }
                        self.pos += 2;
                        let lo = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(self.err_at(at, msg::LONE_SURROGATE));
                        }
                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return Err(self.err_at(at, msg::LONE_SURROGATE)),
                    _ => hi,
                };
                return char::from_u32(cp).ok_or_else(|| self.err_at(at, msg::LONE_SURROGATE));
            }
            _ => return Err(self.err_at(at, msg::INVALID_ESCAPE)),
        };
        Ok(c)
    }

    /// Reads four hex digits at the cursor.
    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(self.err_at(self.bytes.len(), msg::EOF));
            };
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return Err(self.err_at(self.pos, msg::INVALID_UNICODE_ESCAPE)),
            };
            v = v * 16 + d as u32;
            self.pos += 1;
        }
        Ok(v)
    }

    // ---------------------------------------------------------------- numbers

    /// Scans a number at the cursor (strict grammar), leaving the cursor
    /// after it.
    #[inline(always)]
    fn scan_number<const BUILD: bool>(&mut self) -> Result<NumberText, JsonError> {
        let bytes = self.bytes;
        let start = self.pos;
        let mut i = start;
        let neg = bytes.get(i) == Some(&b'-');
        if neg {
            i += 1;
        }
        let int_start = i;
        let mut mant = 0u64;
        match bytes.get(i) {
            Some(b'0') => {
                i += 1;
                if matches!(bytes.get(i), Some(b'0'..=b'9')) {
                    return Err(self.err_at(start, msg::LEADING_ZERO));
                }
            }
            Some(b'1'..=b'9') => {
                while let Some(&d) = bytes.get(i) {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    if BUILD {
                        mant = mant.wrapping_mul(10).wrapping_add((d - b'0') as u64);
                    }
                    i += 1;
                }
            }
            None => return Err(self.err_at(i, msg::EOF)),
            Some(_) => return Err(self.err_at(start, msg::INVALID_NUMBER)),
        }
        let int_digits = i - int_start;
        let mut integral = true;
        let mut has_exp = false;
        if bytes.get(i) == Some(&b'.') {
            integral = false;
            i = self.digits(i + 1, start)?;
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            integral = false;
            has_exp = true;
            i += 1;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            i = self.digits(i, start)?;
        }
        self.pos = i;
        Ok(NumberText {
            start,
            neg,
            mant,
            int_digits,
            integral,
            has_exp,
        })
    }

    /// Reads a number at the cursor: `Int` if it has no fraction or
    /// exponent and fits in `i64`, otherwise a finite `Float`.
    #[inline(always)]
    pub(crate) fn number(&mut self) -> Result<Value, JsonError> {
        let n = self.scan_number::<true>()?;
        // Up to 19 digits always fit in u64 (10^19 - 1 < 2^64), so `mant` is exact.
        if n.integral && n.int_digits <= 19 {
            if n.mant <= i64::MAX as u64 {
                let m = n.mant as i64;
                return Ok(Value::Int(if n.neg { -m } else { m }));
            }
            if n.neg && n.mant == 1u64 << 63 {
                return Ok(Value::Int(i64::MIN));
            }
        }
        self.float(n.start, self.pos).map(Value::Float)
    }

    /// Validates and skips a number at the cursor, rejecting exactly what
    /// [`number`](Self::number) rejects (including magnitudes beyond `f64`).
    #[inline(always)]
    pub(crate) fn skip_number(&mut self) -> Result<(), JsonError> {
        let n = self.scan_number::<false>()?;
        // Only an exponent or a huge integer part can overflow f64.
        if n.has_exp || n.int_digits > 308 {
            self.float(n.start, self.pos)?;
        }
        Ok(())
    }

    /// One or more digits from `i`; returns the index after them.
    #[inline(always)]
    fn digits(&self, mut i: usize, start: usize) -> Result<usize, JsonError> {
        let first = i;
        while matches!(self.bytes.get(i), Some(b'0'..=b'9')) {
            i += 1;
        }
        if i == first {
            return Err(match self.bytes.get(i) {
                None => self.err_at(i, msg::EOF),
                Some(_) => self.err_at(start, msg::INVALID_NUMBER),
            });
        }
        Ok(i)
    }

    /// Converts the validated number text `start..end` to a finite `f64`.
    #[cold]
    fn float(&self, start: usize, end: usize) -> Result<f64, JsonError> {
        let text = std::str::from_utf8(&self.bytes[start..end])
            .map_err(|_| self.err_at(start, msg::INVALID_NUMBER))?;
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(f),
            Ok(_) => Err(self.err_at(start, msg::NUMBER_RANGE)),
            Err(_) => Err(self.err_at(start, msg::INVALID_NUMBER)),
        }
    }

    // --------------------------------------------------------------- literals

    /// Consumes `lit` (`true`, `false` or `null`) at the cursor.
    #[inline(always)]
    pub(crate) fn literal(&mut self, lit: &'static [u8]) -> Result<(), JsonError> {
        let rest = &self.bytes[self.pos.min(self.bytes.len())..];
        if rest.starts_with(lit) {
            self.pos += lit.len();
            Ok(())
        } else if lit.starts_with(rest) {
            Err(self.err_at(self.bytes.len(), msg::EOF))
        } else {
            Err(self.err_at(self.pos, msg::INVALID_LITERAL))
        }
    }

    // ------------------------------------------------------------------ skips

    /// Validates and skips one value at the cursor, which is inside `depth`
    /// open containers.
    pub(crate) fn skip_value(&mut self, depth: usize) -> Result<(), JsonError> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                self.skip_str()
            }
            Some(b'-' | b'0'..=b'9') => self.skip_number(),
            Some(b'{') => self.skip_object(depth),
            Some(b'[') => self.skip_array(depth),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => Err(self.unexpected(msg::EXPECTED_VALUE)),
        }
    }

    /// Skips the object at the cursor (at `{`).
    fn skip_object(&mut self, depth: usize) -> Result<(), JsonError> {
        self.enter(depth)?;
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.key_quote()?;
            self.skip_str()?;
            self.colon()?;
            self.skip_value(depth + 1)?;
            if !self.object_sep()? {
                return Ok(());
            }
        }
    }

    /// Skips the array at the cursor (at `[`).
    fn skip_array(&mut self, depth: usize) -> Result<(), JsonError> {
        self.enter(depth)?;
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_value(depth + 1)?;
            if !self.array_sep()? {
                return Ok(());
            }
        }
    }
}
