//! The `todo` table for Diesel, and its row.

diesel::table! {
    /// The todo table.
    todo (id) {
        /// The primary key.
        id -> Int8,
        /// What to do.
        task -> Text,
        /// Whether it is done.
        is_completed -> Bool,
    }
}

/// A row of `todo`.
#[derive(Debug, Clone, diesel::Queryable, diesel::Selectable)]
#[diesel(table_name = todo)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct TodoRow {
    /// The primary key.
    pub id: i64,
    /// What to do.
    pub task: String,
    /// Whether it is done.
    pub is_completed: bool,
}

impl From<TodoRow> for crate::todo::Todo {
    fn from(row: TodoRow) -> Self {
        Self {
            id: row.id,
            task: row.task,
            is_completed: row.is_completed,
        }
    }
}
