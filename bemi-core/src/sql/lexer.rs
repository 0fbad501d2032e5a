//! A minimal PostgreSQL lexer: just enough to find statement keywords, parentheses and
//! semicolons while skipping comments, string literals, quoted identifiers and dollar quotes.
//!
//! It never allocates. Anything it cannot close (a string, a quoted identifier, a dollar quote,
//! a block comment) is reported as [`Unterminated`], so callers can leave such SQL untouched.

/// A significant token of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    /// A keyword or unquoted identifier.
    Word(&'a str),
    /// A single punctuation or operator byte, e.g. `(`, `)`, `;`, `,`.
    Punct(u8),
    /// A literal, quoted identifier, number or parameter: nothing to look into.
    Opaque,
}

/// The SQL ends inside a string, quoted identifier, dollar quote or block comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unterminated;

/// Iterates over the significant tokens of `sql`.
pub(crate) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    /// Set when the input ends inside a `--` comment (no newline after it).
    ends_in_line_comment: bool,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        Self {
            src,
            pos: 0,
            ends_in_line_comment: false,
        }
    }

    /// Whether the input ended inside a `--` comment; valid once the iterator is exhausted.
    pub(crate) fn ends_in_line_comment(&self) -> bool {
        self.ends_in_line_comment
    }

    fn bytes(&self) -> &'a [u8] {
        self.src.as_bytes()
    }

    fn peek(&self, offset: usize) -> Option<u8> {
        self.bytes().get(self.pos + offset).copied()
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) -> Result<(), Unterminated> {
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some(b), _) if b.is_ascii_whitespace() => self.pos += 1,
                (Some(b'-'), Some(b'-')) => match memchr(b'\n', &self.bytes()[self.pos..]) {
                    Some(newline) => self.pos += newline + 1,
                    None => {
                        self.pos = self.src.len();
                        self.ends_in_line_comment = true;
                    }
                },
                (Some(b'/'), Some(b'*')) => self.skip_block_comment()?,
                _ => return Ok(()),
            }
        }
    }

    /// Skips a block comment; PostgreSQL block comments nest.
    fn skip_block_comment(&mut self) -> Result<(), Unterminated> {
        let bytes = self.bytes();
        let mut depth = 0usize;
        let mut i = self.pos;
        while i + 1 < bytes.len() {
            match (bytes[i], bytes[i + 1]) {
                (b'/', b'*') => {
                    depth += 1;
                    i += 2;
                }
                (b'*', b'/') => {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        self.pos = i;
                        return Ok(());
                    }
                }
                _ => i += 1,
            }
        }
        Err(Unterminated)
    }

    /// Skips a quoted run that starts at `self.pos` with `quote` and where a doubled quote is an
    /// escaped quote; with `backslash`, `\x` escapes any byte too (E'' strings).
    fn skip_quoted(&mut self, quote: u8, backslash: bool) -> Result<(), Unterminated> {
        let bytes = self.bytes();
        let mut i = self.pos + 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if backslash => i += 2,
                b if b == quote => {
                    if bytes.get(i + 1) == Some(&quote) {
                        i += 2;
                    } else {
                        self.pos = i + 1;
                        return Ok(());
                    }
                }
                _ => i += 1,
            }
        }
        Err(Unterminated)
    }

    /// At a `$`: skips a dollar-quoted string or a `$1` parameter; returns `false` when the `$`
    /// starts neither (then it is an operator byte).
    fn skip_dollar(&mut self) -> Result<bool, Unterminated> {
        let bytes = self.bytes();
        let start = self.pos;
        let mut i = start + 1;
        if bytes.get(i).is_some_and(u8::is_ascii_digit) {
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            self.pos = i;
            return Ok(true);
        }
        if bytes.get(i).is_some_and(|&b| is_ident_start(b)) {
            while bytes.get(i).is_some_and(|&b| is_ident_char(b) && b != b'$') {
                i += 1;
            }
        }
        if bytes.get(i) != Some(&b'$') {
            return Ok(false);
        }
        // `start` and `i` are at a `$`: both slices start and end between characters.
        let (Some(tag), Some(rest)) = (self.src.get(start..=i), self.src.get(i + 1..)) else {
            return Ok(false);
        };
        match rest.find(tag) {
            Some(offset) => {
                self.pos = i + 1 + offset + tag.len();
                Ok(true)
            }
            None => Err(Unterminated),
        }
    }

    fn word_end(&self, from: usize) -> usize {
        let bytes = self.bytes();
        let mut i = from;
        while bytes.get(i).is_some_and(|&b| is_ident_char(b)) {
            i += 1;
        }
        i
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Result<Token<'a>, Unterminated>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(error) = self.skip_trivia() {
            self.pos = self.src.len();
            return Some(Err(error));
        }
        let first = self.peek(0)?;
        let second = self.peek(1);
        let result = match first {
            b'\'' => self.skip_quoted(b'\'', false).map(|()| Token::Opaque),
            b'"' => self.skip_quoted(b'"', false).map(|()| Token::Opaque),
            b'e' | b'E' if second == Some(b'\'') => {
                self.pos += 1;
                self.skip_quoted(b'\'', true).map(|()| Token::Opaque)
            }
            // B'0101', X'ff', N'text': plain quoting rules after the prefix.
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if second == Some(b'\'') => {
                self.pos += 1;
                self.skip_quoted(b'\'', false).map(|()| Token::Opaque)
            }
            // U&'text' and U&"ident"
            b'u' | b'U' if second == Some(b'&') && matches!(self.peek(2), Some(b'\'' | b'"')) => {
                self.pos += 2;
                let quote = self.peek(0).unwrap_or(b'\'');
                self.skip_quoted(quote, false).map(|()| Token::Opaque)
            }
            b'$' => match self.skip_dollar() {
                Ok(true) => Ok(Token::Opaque),
                Ok(false) => {
                    self.pos += 1;
                    Ok(Token::Punct(b'$'))
                }
                Err(error) => Err(error),
            },
            b if is_ident_start(b) => {
                let end = self.word_end(self.pos);
                // A word ends before an ASCII byte or at the end: between characters.
                let word = self.src.get(self.pos..end);
                self.pos = end;
                Ok(word.map_or(Token::Opaque, Token::Word))
            }
            b if b.is_ascii_digit() => {
                let end = self.word_end(self.pos);
                self.pos = end;
                Ok(Token::Opaque)
            }
            _ => {
                // Step over one whole character so that `pos` stays on a char boundary.
                let width = self
                    .src
                    .get(self.pos..)
                    .and_then(|rest| rest.chars().next())
                    .map_or(1, char::len_utf8);
                self.pos += width;
                Ok(Token::Punct(first))
            }
        };
        if result.is_err() {
            self.pos = self.src.len();
        }
        Some(result)
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(sql: &str) -> Result<Vec<Token<'_>>, Unterminated> {
        Lexer::new(sql).collect()
    }

    #[test]
    fn skips_comments_strings_and_quoted_identifiers() {
        let sql = "/* a /* nested */ c */ -- line\n INSERT INTO \"x\"\"y\" VALUES ('it''s', E'\\'', $$a;b$$, $t$ ) $t$, $1)";
        let words: Vec<_> = tokens(sql)
            .unwrap()
            .into_iter()
            .filter_map(|t| match t {
                Token::Word(w) => Some(w),
                _ => None,
            })
            .collect();
        assert_eq!(words, ["INSERT", "INTO", "VALUES"]);
    }

    #[test]
    fn reports_unterminated_constructs() {
        for sql in [
            "SELECT 'abc",
            "SELECT \"abc",
            "SELECT $$abc",
            "SELECT $tag$ abc $other$",
            "SELECT /* a /* b */",
            "SELECT E'\\'",
        ] {
            assert_eq!(tokens(sql), Err(Unterminated), "{sql}");
        }
    }

    #[test]
    fn knows_when_input_ends_in_a_line_comment() {
        let mut lexer = Lexer::new("DELETE FROM t -- trailing");
        lexer.by_ref().for_each(drop);
        assert!(lexer.ends_in_line_comment());
        let mut lexer = Lexer::new("DELETE FROM t -- trailing\n");
        lexer.by_ref().for_each(drop);
        assert!(!lexer.ends_in_line_comment());
    }

    #[test]
    fn dollar_inside_identifier_is_not_a_quote() {
        assert_eq!(
            tokens("a$b $1").unwrap(),
            [Token::Word("a$b"), Token::Opaque]
        );
    }

    #[test]
    fn multibyte_punctuation_keeps_char_boundaries() {
        assert_eq!(tokens("€ ü").unwrap().len(), 2);
    }
}
