//! The condition language of `filter`:
//!
//! ```text
//! country == "GT" and (temp_c > 20 or weather in ["Sunny", "Windy"])
//! not exists(user.email)          user.age >= 18          kind != null
//! ```
//!
//! Field paths are dotted names (`a.b.c`; backticks for other characters:
//! `` `odd-name` ``), literals are strings (single or double quotes),
//! numbers, `true`, `false`, `null`, and lists `[...]` for `in`. Comparisons
//! between numbers are numeric (`1 == 1.0`); ordering comparisons between
//! different kinds are false; a missing field compares false to everything
//! (use `exists(...)` to test presence). Precedence: `not` > comparisons >
//! `and` > `or`.

use std::cmp::Ordering;

use sluice_engine::operator::FieldPath;
use sluice_engine::value::{Str, Value};

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Compare(Operand, CmpOp, Operand),
    In(Operand, Vec<Value>, bool),
    Exists(FieldPath),
    /// A bare field or literal used as a condition: true when it is `true`.
    Truthy(Operand),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Field(FieldPath),
    Literal(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A syntax error at a character column of the expression (0-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at column {}", .column + 1)]
pub struct ExprError {
    pub column: usize,
    pub message: String,
}

impl Operand {
    fn eval<'a>(&'a self, row: &'a Value) -> &'a Value {
        match self {
            Operand::Field(p) => row.get_path(p),
            Operand::Literal(v) => v,
        }
    }
}

impl Expr {
    /// Evaluates the condition on one row.
    pub fn eval(&self, row: &Value) -> bool {
        match self {
            Expr::And(a, b) => a.eval(row) && b.eval(row),
            Expr::Or(a, b) => a.eval(row) || b.eval(row),
            Expr::Not(e) => !e.eval(row),
            Expr::Exists(p) => row.get_path(p).exists(),
            Expr::Truthy(o) => matches!(o.eval(row), Value::Bool(true)),
            Expr::In(o, list, negated) => {
                let v = o.eval(row);
                if !v.exists() {
                    return false;
                }
                list.iter().any(|item| v.loose_eq(item)) != *negated
            }
            Expr::Compare(a, op, b) => {
                let (a, b) = (a.eval(row), b.eval(row));
                if !a.exists() || !b.exists() {
                    return false;
                }
                match op {
                    CmpOp::Eq => a.loose_eq(b),
                    CmpOp::Ne => !a.loose_eq(b),
                    _ => {
                        let comparable = matches!(
                            (a, b),
                            (
                                Value::Int(_) | Value::Float(_),
                                Value::Int(_) | Value::Float(_)
                            ) | (Value::Str(_), Value::Str(_))
                                | (Value::Bool(_), Value::Bool(_))
                        );
                        if !comparable {
                            return false;
                        }
                        let ord = a.total_cmp(b);
                        match op {
                            CmpOp::Lt => ord == Ordering::Less,
                            CmpOp::Le => ord != Ordering::Greater,
                            CmpOp::Gt => ord == Ordering::Greater,
                            CmpOp::Ge => ord != Ordering::Less,
                            CmpOp::Eq | CmpOp::Ne => unreachable!(),
                        }
                    }
                }
            }
        }
    }

    /// Every field path the condition reads.
    pub fn fields(&self, out: &mut Vec<FieldPath>) {
        let operand = |o: &Operand, out: &mut Vec<FieldPath>| {
            if let Operand::Field(p) = o {
                out.push(p.clone());
            }
        };
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.fields(out);
                b.fields(out);
            }
            Expr::Not(e) => e.fields(out),
            Expr::Exists(p) => out.push(p.clone()),
            Expr::Truthy(o) | Expr::In(o, _, _) => operand(o, out),
            Expr::Compare(a, _, b) => {
                operand(a, out);
                operand(b, out);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(Value),
    Op(&'static str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, ExprError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |column: usize, message: String| ExprError { column, message };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push((start, Tok::LParen));
                i += 1;
            }
            ')' => {
                out.push((start, Tok::RParen));
                i += 1;
            }
            '[' => {
                out.push((start, Tok::LBracket));
                i += 1;
            }
            ']' => {
                out.push((start, Tok::RBracket));
                i += 1;
            }
            ',' => {
                out.push((start, Tok::Comma));
                i += 1;
            }
            '=' | '!' | '<' | '>' => {
                let two = chars.get(i + 1) == Some(&'=');
                let op = match (c, two) {
                    ('=', true) => "==",
                    ('!', true) => "!=",
                    ('<', true) => "<=",
                    ('>', true) => ">=",
                    ('<', false) => "<",
                    ('>', false) => ">",
                    ('!', false) => "not",
                    _ => {
                        return Err(err(
                            start,
                            "`=` is not an operator; use `==` to compare".into(),
                        ))
                    }
                };
                out.push((start, Tok::Op(op)));
                i += if two { 2 } else { 1 };
            }
            '&' | '|' if chars.get(i + 1) == Some(&c) => {
                out.push((start, Tok::Op(if c == '&' { "and" } else { "or" })));
                i += 2;
            }
            '"' | '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(err(start, "unterminated string".into())),
                        Some(&q) if q == c => break,
                        Some('\\') => {
                            let esc = chars
                                .get(i + 1)
                                .ok_or_else(|| err(i, "unterminated string".into()))?;
                            s.push(match esc {
                                'n' => '\n',
                                't' => '\t',
                                other => *other,
                            });
                            i += 2;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push((start, Tok::Str(s)));
            }
            '`' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&ch| ch == '`')
                    .ok_or_else(|| err(start, "unterminated `quoted` field name".into()))?;
                let name: String = chars[i + 1..i + 1 + end].iter().collect();
                i += end + 2;
                // allow `a`.b and a.`b`
                let mut full = name;
                while chars.get(i) == Some(&'.') {
                    let rest_start = i + 1;
                    let mut j = rest_start;
                    while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                        j += 1;
                    }
                    full.push('\u{0}');
                    full.extend(&chars[rest_start..j]);
                    i = j;
                }
                out.push((start, Tok::Ident(format!("\u{1}{full}"))));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || matches!(chars[i], '.' | '+' | '-')
                            && matches!(chars[i - 1], 'e' | 'E' | '0'..='9'))
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let v = if let Ok(n) = text.parse::<i64>() {
                    Value::Int(n)
                } else if let Ok(f) = text.parse::<f64>() {
                    Value::Float(f)
                } else {
                    return Err(err(start, format!("invalid number `{text}`")));
                };
                out.push((start, Tok::Num(v)));
            }
            c if c.is_alphabetic() || c == '_' || c == '$' => {
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '.' | '$'))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let tok = match word.as_str() {
                    "and" | "AND" => Tok::Op("and"),
                    "or" | "OR" => Tok::Op("or"),
                    "not" | "NOT" => Tok::Op("not"),
                    "in" | "IN" => Tok::Op("in"),
                    _ => Tok::Ident(word),
                };
                out.push((start, tok));
            }
            other => return Err(err(start, format!("unexpected character `{other}`"))),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
}

/// Parses a condition.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    let toks = lex(src)?;
    let mut p = Parser {
        toks,
        pos: 0,
        end: src.chars().count(),
    };
    let e = p.or()?;
    if let Some((col, tok)) = p.toks.get(p.pos) {
        return Err(ExprError {
            column: *col,
            message: format!(
                "unexpected {} after a complete condition (missing `and`/`or`?)",
                describe(tok)
            ),
        });
    }
    Ok(e)
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Ident(s) => format!(
            "name `{}`",
            s.trim_start_matches('\u{1}').replace('\u{0}', ".")
        ),
        Tok::Str(s) => format!("string \"{s}\""),
        Tok::Num(v) => format!("number {v}"),
        Tok::Op(o) => format!("`{o}`"),
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::LBracket => "`[`".into(),
        Tok::RBracket => "`]`".into(),
        Tok::Comma => "`,`".into(),
    }
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn col(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(c, _)| *c)
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, ExprError> {
        Err(ExprError {
            column: self.col(),
            message: message.into(),
        })
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == Some(tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.and()?;
        while self.eat(&Tok::Op("or")) {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.unary()?;
        while self.eat(&Tok::Op("and")) {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.eat(&Tok::Op("not")) {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat(&Tok::LParen) {
            let e = self.or()?;
            if !self.eat(&Tok::RParen) {
                return self.err("expected `)`");
            }
            return Ok(e);
        }
        if let Some(Tok::Ident(name)) = self.peek() {
            if name == "exists" && self.toks.get(self.pos + 1).map(|t| &t.1) == Some(&Tok::LParen) {
                self.pos += 2;
                let Operand::Field(path) = self.operand()? else {
                    return self.err("exists(...) takes a field name");
                };
                if !self.eat(&Tok::RParen) {
                    return self.err("expected `)` after the field name");
                }
                return Ok(Expr::Exists(path));
            }
        }
        let left = self.operand()?;
        let op = match self.peek() {
            Some(Tok::Op("==")) => CmpOp::Eq,
            Some(Tok::Op("!=")) => CmpOp::Ne,
            Some(Tok::Op("<")) => CmpOp::Lt,
            Some(Tok::Op("<=")) => CmpOp::Le,
            Some(Tok::Op(">")) => CmpOp::Gt,
            Some(Tok::Op(">=")) => CmpOp::Ge,
            Some(Tok::Op("in")) => {
                self.pos += 1;
                return Ok(Expr::In(left, self.list()?, false));
            }
            Some(Tok::Op("not"))
                if self.toks.get(self.pos + 1).map(|t| &t.1) == Some(&Tok::Op("in")) =>
            {
                self.pos += 2;
                return Ok(Expr::In(left, self.list()?, true));
            }
            _ => return Ok(Expr::Truthy(left)),
        };
        self.pos += 1;
        let right = self.operand()?;
        Ok(Expr::Compare(left, op, right))
    }

    fn list(&mut self) -> Result<Vec<Value>, ExprError> {
        if !self.eat(&Tok::LBracket) {
            return self.err("expected a list `[...]` after `in`");
        }
        let mut items = Vec::new();
        if self.eat(&Tok::RBracket) {
            return Ok(items);
        }
        loop {
            match self.operand()? {
                Operand::Literal(v) => items.push(v),
                Operand::Field(_) => return self.err("lists after `in` hold literals only"),
            }
            if self.eat(&Tok::RBracket) {
                return Ok(items);
            }
            if !self.eat(&Tok::Comma) {
                return self.err("expected `,` or `]` in the list");
            }
        }
    }

    fn operand(&mut self) -> Result<Operand, ExprError> {
        let Some((_, tok)) = self.toks.get(self.pos).cloned() else {
            return self.err("unexpected end of the condition");
        };
        let operand = match tok {
            Tok::Str(s) => Operand::Literal(Value::Str(Str::from(s))),
            Tok::Num(v) => Operand::Literal(v),
            Tok::Ident(name) => match name.as_str() {
                "true" => Operand::Literal(Value::Bool(true)),
                "false" => Operand::Literal(Value::Bool(false)),
                "null" => Operand::Literal(Value::Null),
                quoted if quoted.starts_with('\u{1}') => {
                    Operand::Field(quoted[1..].split('\u{0}').map(Str::from).collect())
                }
                plain => {
                    if plain.split('.').any(str::is_empty) {
                        return self.err(format!("invalid field path `{plain}`"));
                    }
                    Operand::Field(plain.split('.').map(Str::from).collect())
                }
            },
            other => {
                return self.err(format!(
                    "expected a field or a value, found {}",
                    describe(&other)
                ))
            }
        };
        self.pos += 1;
        Ok(operand)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::json::parse_value;

    fn check(cond: &str, doc: &str) -> bool {
        parse(cond)
            .unwrap()
            .eval(&parse_value(doc.as_bytes()).unwrap())
    }

    #[test]
    fn comparisons_and_logic() {
        let doc = r#"{"country":"GT","temp":21.5,"n":3,"user":{"age":20},"ok":true,"z":null}"#;
        assert!(check("country == 'GT'", doc));
        assert!(check("country != \"US\"", doc));
        assert!(check("temp > 20 and n <= 3", doc));
        assert!(!check("temp > 20 and n < 3", doc));
        assert!(check("temp > 30 or user.age >= 18", doc));
        assert!(check("not (country == 'US')", doc));
        assert!(check("n == 3.0", doc));
        assert!(check("ok", doc));
        assert!(check("z == null", doc));
        assert!(check("country in ['GT', 'MX']", doc));
        assert!(check("country not in ['US']", doc));
        assert!(!check("country in []", doc));
        assert!(check("exists(user.age) && !exists(user.name)", doc));
        assert!(check("a == 1 or b == 2 or country == 'GT'", doc));
        // precedence: and binds tighter than or
        assert!(check("country == 'US' and n == 1 or n == 3", doc));
    }

    #[test]
    fn missing_and_mismatched_types_are_false() {
        let doc = r#"{"country":"GT","n":3}"#;
        assert!(!check("missing == 1", doc));
        assert!(!check("missing != 1", doc));
        assert!(!check("country > 3", doc));
        assert!(!check("country < 3", doc));
        assert!(!check("missing in [1]", doc));
    }

    #[test]
    fn quoted_field_names() {
        let doc = r#"{"odd-name":{"x":1}}"#;
        assert!(check("`odd-name`.x == 1", doc));
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = parse("country = 'GT'").unwrap_err();
        assert_eq!(e.column, 8);
        assert!(e.message.contains("use `==`"));
        let e = parse("country == 'GT' temp > 3").unwrap_err();
        assert_eq!(e.column, 16);
        assert!(parse("(a == 1").unwrap_err().message.contains("`)`"));
        assert!(parse("a in 3").unwrap_err().message.contains("list"));
        assert!(parse("a == 'x")
            .unwrap_err()
            .message
            .contains("unterminated"));
        assert!(parse("").is_err());
        assert!(parse("a == ").unwrap_err().message.contains("end"));
    }

    #[test]
    fn fields_are_collected() {
        let mut f = Vec::new();
        parse("a.b == 1 and exists(c) or d in [1]")
            .unwrap()
            .fields(&mut f);
        let names: Vec<String> = f.iter().map(|p| p.join(".")).collect();
        assert_eq!(names, vec!["a.b", "c", "d"]);
    }
}
