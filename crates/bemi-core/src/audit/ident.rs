//! Identifiers written into SQL text. Values never are: they are bound parameters; only the
//! names of schemas, tables and columns, which a statement cannot take as parameters, are
//! quoted here.

/// `name` as a quoted identifier: `"todo"`, `"say ""hi"""`.
pub(crate) fn quote_ident(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// `schema.table`, both quoted.
pub(crate) fn quote_table(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_doubled_and_everything_else_kept() {
        assert_eq!(quote_ident("todo"), r#""todo""#);
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(
            quote_ident("x\"; DROP TABLE t; --"),
            r#""x""; DROP TABLE t; --""#
        );
        assert_eq!(quote_table("Sales", "order"), r#""Sales"."order""#);
    }
}
