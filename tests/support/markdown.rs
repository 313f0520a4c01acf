//! Code blocks of a Markdown page, for the tests that run the docs'
//! snippets and commands exactly as written.

#[derive(Debug)]
pub struct Block {
    /// The info string after the opening fence (`toml`, `sh,fails`...).
    pub info: String,
    pub text: String,
    /// 1-based line of the opening fence.
    pub line: usize,
}

/// Every fenced code block of `markdown`, in order.
pub fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => {
                current = Some(Block {
                    info: info.trim().to_string(),
                    text: String::new(),
                    line: i + 1,
                })
            }
            (Some(_), Some("")) => out.push(current.take().unwrap()),
            (Some(b), _) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(current.is_none(), "unterminated code block");
    out
}
