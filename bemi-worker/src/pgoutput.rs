//! A decoder of the pgoutput logical replication messages (protocol version 1) that the
//! replication connection hands over as raw bytes: Relation, Type, Origin, Insert, Update,
//! Delete and Truncate. (Begin, Commit and logical-decoding messages arrive already parsed.)
//!
//! Zero-copy: tuple values borrow from the message. The format is PostgreSQL's
//! "Logical Replication Message Formats" chapter.

use crate::error::DecodeError;

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PgOutput<'a> {
    /// The description of a relation, sent before its first change and after schema changes.
    Relation(Relation),
    /// A non-builtin type used by a relation.
    Type {
        /// Its OID.
        oid: u32,
        /// Its schema.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The replication origin of the transaction.
    Origin {
        /// The origin's name.
        name: String,
    },
    /// A new row.
    Insert {
        /// The relation's OID.
        relation: u32,
        /// The row.
        new: Vec<Value<'a>>,
    },
    /// A changed row.
    Update {
        /// The relation's OID.
        relation: u32,
        /// The old row: the whole row with REPLICA IDENTITY FULL, the key columns when the key
        /// changed, or nothing.
        old: Option<OldRow<'a>>,
        /// The new row.
        new: Vec<Value<'a>>,
    },
    /// A deleted row.
    Delete {
        /// The relation's OID.
        relation: u32,
        /// The old row or its key.
        old: OldRow<'a>,
    },
    /// One TRUNCATE of one or more relations.
    Truncate {
        /// The relations' OIDs.
        relations: Vec<u32>,
        /// `CASCADE` was given.
        cascade: bool,
        /// `RESTART IDENTITY` was given.
        restart_identity: bool,
    },
}

/// The old image of an updated or deleted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OldRow<'a> {
    /// `true` for the whole row (REPLICA IDENTITY FULL), `false` for the key columns only
    /// (other columns are [`Value::Null`]).
    pub full: bool,
    /// The values.
    pub values: Vec<Value<'a>>,
}

/// One column value of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    /// SQL NULL.
    Null,
    /// A TOASTed value that the change did not touch; its value is in the old row, if any.
    UnchangedToast,
    /// The value in PostgreSQL's text format.
    Text(&'a [u8]),
    /// The value in binary format (only when the binary option is on; we never ask for it).
    Binary(&'a [u8]),
}

/// A relation as described by a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    /// Its OID.
    pub oid: u32,
    /// Its schema.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its REPLICA IDENTITY: `d`efault, `n`othing, `f`ull or `i`ndex.
    pub replica_identity: u8,
    /// Its columns, in order.
    pub columns: Vec<Column>,
}

/// A column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    /// Part of the replica identity key (every column is, with REPLICA IDENTITY FULL).
    pub is_key: bool,
    /// Its name.
    pub name: String,
    /// Its type's OID.
    pub type_oid: u32,
    /// Its type modifier.
    pub type_modifier: i32,
}

/// Decodes one pgoutput message (the payload of an XLogData message).
pub(crate) fn decode(message: &[u8]) -> Result<PgOutput<'_>, DecodeError> {
    let mut reader = Reader { rest: message };
    match reader.u8("message tag")? {
        b'R' => reader.relation().map(PgOutput::Relation),
        b'Y' => Ok(PgOutput::Type {
            oid: reader.u32("type oid")?,
            namespace: reader.string("type namespace")?,
            name: reader.string("type name")?,
        }),
        b'O' => {
            let _commit_lsn = reader.u64("origin lsn")?;
            Ok(PgOutput::Origin {
                name: reader.string("origin name")?,
            })
        }
        b'I' => {
            let relation = reader.u32("relation oid")?;
            reader.expect(b'N', "insert tuple marker")?;
            Ok(PgOutput::Insert {
                relation,
                new: reader.tuple()?,
            })
        }
        b'U' => {
            let relation = reader.u32("relation oid")?;
            let old = match reader.u8("update tuple marker")? {
                b'N' => None,
                marker @ (b'K' | b'O') => {
                    let values = reader.tuple()?;
                    reader.expect(b'N', "update new tuple marker")?;
                    Some(OldRow {
                        full: marker == b'O',
                        values,
                    })
                }
                byte => {
                    return Err(DecodeError::Unexpected {
                        what: "update tuple marker",
                        byte,
                    });
                }
            };
            Ok(PgOutput::Update {
                relation,
                old,
                new: reader.tuple()?,
            })
        }
        b'D' => {
            let relation = reader.u32("relation oid")?;
            let full = match reader.u8("delete tuple marker")? {
                b'O' => true,
                b'K' => false,
                byte => {
                    return Err(DecodeError::Unexpected {
                        what: "delete tuple marker",
                        byte,
                    });
                }
            };
            Ok(PgOutput::Delete {
                relation,
                old: OldRow {
                    full,
                    values: reader.tuple()?,
                },
            })
        }
        b'T' => {
            let count = reader.u32("truncate relation count")?;
            let options = reader.u8("truncate options")?;
            let relations = (0..count)
                .map(|_| reader.u32("truncated relation oid"))
                .collect::<Result<_, _>>()?;
            Ok(PgOutput::Truncate {
                relations,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            })
        }
        byte => Err(DecodeError::Unexpected {
            what: "message tag",
            byte,
        }),
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn expect(&mut self, expected: u8, what: &'static str) -> Result<(), DecodeError> {
        match self.u8(what)? {
            byte if byte == expected => Ok(()),
            byte => Err(DecodeError::Unexpected { what, byte }),
        }
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let bytes = self.take(2, what)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let bytes = self.take(4, what)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let bytes = self.take(8, what)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_be_bytes(array))
    }

    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let end = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated(what))?;
        let bytes = self.take(end + 1, what)?;
        std::str::from_utf8(&bytes[..end])
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8(what))
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let oid = self.u32("relation oid")?;
        let namespace = self.string("relation namespace")?;
        let name = self.string("relation name")?;
        let replica_identity = self.u8("replica identity")?;
        let count = self.u16("column count")?;
        let columns = (0..count)
            .map(|_| {
                Ok(Column {
                    is_key: self.u8("column flags")? & 1 != 0,
                    name: self.string("column name")?,
                    type_oid: self.u32("column type")?,
                    type_modifier: self.u32("column type modifier")? as i32,
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(Relation {
            oid,
            // An empty namespace means pg_catalog.
            namespace: if namespace.is_empty() {
                "pg_catalog".to_owned()
            } else {
                namespace
            },
            name,
            replica_identity,
            columns,
        })
    }

    fn tuple(&mut self) -> Result<Vec<Value<'a>>, DecodeError> {
        let count = self.u16("tuple column count")?;
        (0..count)
            .map(|_| match self.u8("tuple value kind")? {
                b'n' => Ok(Value::Null),
                b'u' => Ok(Value::UnchangedToast),
                b't' => {
                    let len = self.u32("text value length")? as usize;
                    self.take(len, "text value").map(Value::Text)
                }
                b'b' => {
                    let len = self.u32("binary value length")? as usize;
                    self.take(len, "binary value").map(Value::Binary)
                }
                byte => Err(DecodeError::Unexpected {
                    what: "tuple value kind",
                    byte,
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_insert_message_decodes_to_borrowed_values() {
        use crate::pgoutput::{PgOutput, Value, decode};

        // An Insert into relation 16385 of one text column "Sleep".
        let mut msg = vec![b'I'];
        msg.extend(16385u32.to_be_bytes());
        msg.push(b'N');
        msg.extend(1u16.to_be_bytes());
        msg.push(b't');
        msg.extend(5u32.to_be_bytes());
        msg.extend(b"Sleep");
        match decode(&msg).unwrap() {
            PgOutput::Insert { relation, new } => {
                assert_eq!(relation, 16385);
                assert_eq!(new, vec![Value::Text(b"Sleep")]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_truncate_message_decodes_with_its_options() {
        let truncate = [b'T', 0, 0, 0, 1, 1, 0, 0, 0x40, 0x01];
        let decoded = decode(&truncate).unwrap();
        assert!(matches!(decoded, PgOutput::Truncate { cascade: true, .. }));
    }

    fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut out = (values.len() as u16).to_be_bytes().to_vec();
        for value in values {
            match value {
                None => out.push(b'n'),
                Some("\u{1}toast") => out.push(b'u'),
                Some(text) => {
                    out.push(b't');
                    out.extend((text.len() as u32).to_be_bytes());
                    out.extend(text.as_bytes());
                }
            }
        }
        out
    }

    #[test]
    fn decodes_a_relation() {
        let mut msg = vec![b'R'];
        msg.extend(42u32.to_be_bytes());
        msg.extend(b"public\0todo\0");
        msg.push(b'f');
        msg.extend(2u16.to_be_bytes());
        msg.push(1);
        msg.extend(b"id\0");
        msg.extend(20u32.to_be_bytes());
        msg.extend((-1i32).to_be_bytes());
        msg.push(0);
        msg.extend(b"task\0");
        msg.extend(25u32.to_be_bytes());
        msg.extend((-1i32).to_be_bytes());
        let PgOutput::Relation(relation) = decode(&msg).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!(relation.name, "todo");
        assert_eq!(relation.replica_identity, b'f');
        assert_eq!(relation.columns.len(), 2);
        assert!(relation.columns[0].is_key && !relation.columns[1].is_key);
        assert_eq!(relation.columns[1].type_oid, 25);
        assert_eq!(relation.columns[1].type_modifier, -1);
    }

    #[test]
    fn decodes_an_update_with_full_old_row_and_unchanged_toast() {
        let mut msg = vec![b'U'];
        msg.extend(7u32.to_be_bytes());
        msg.push(b'O');
        msg.extend(tuple(&[Some("1"), Some("big")]));
        msg.push(b'N');
        msg.extend(tuple(&[Some("2"), Some("\u{1}toast")]));
        let PgOutput::Update { relation, old, new } = decode(&msg).unwrap() else {
            panic!("not an update");
        };
        assert_eq!(relation, 7);
        let old = old.unwrap();
        assert!(old.full);
        assert_eq!(old.values, [Value::Text(b"1"), Value::Text(b"big")]);
        assert_eq!(new, [Value::Text(b"2"), Value::UnchangedToast]);
    }

    #[test]
    fn decodes_a_delete_with_key_only() {
        let mut msg = vec![b'D'];
        msg.extend(7u32.to_be_bytes());
        msg.push(b'K');
        msg.extend(tuple(&[Some("1"), None]));
        let PgOutput::Delete { old, .. } = decode(&msg).unwrap() else {
            panic!("not a delete");
        };
        assert!(!old.full);
        assert_eq!(old.values, [Value::Text(b"1"), Value::Null]);
    }

    #[test]
    fn rejects_truncated_and_unknown_messages() {
        assert_eq!(decode(&[]), Err(DecodeError::Truncated("message tag")));
        assert_eq!(
            decode(&[b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0, 0, 0, 9, b'x']),
            Err(DecodeError::Truncated("text value"))
        );
        assert!(matches!(
            decode(b"Z"),
            Err(DecodeError::Unexpected { byte: b'Z', .. })
        ));
    }
}
