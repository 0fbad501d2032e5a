//! The todo row, the request body that creates one, the SQL of the apps, and [`TodoStore`]: the
//! four queries the REST apps need of a database library.
//!
//! ```
//! use bemi_examples::todo::Todo;
//!
//! let todo = Todo { id: 1, task: "Sleep".into(), is_completed: false };
//! assert_eq!(
//!     serde_json::to_value(&todo).unwrap(),
//!     serde_json::json!({"id": 1, "task": "Sleep", "is_completed": false})
//! );
//! ```

use std::future::Future;

use serde::{Deserialize, Serialize};

/// A row of the `todo` table, as the REST apps send it and the GraphQL app resolves it
/// (`isCompleted` there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct Todo {
    /// The primary key.
    pub id: i64,
    /// What to do.
    pub task: String,
    /// Whether it is done.
    pub is_completed: bool,
}

impl From<(i64, String, bool)> for Todo {
    fn from((id, task, is_completed): (i64, String, bool)) -> Self {
        Self {
            id,
            task,
            is_completed,
        }
    }
}

/// The body of `POST /todo`.
///
/// ```
/// let body: bemi_examples::todo::NewTodo = serde_json::from_str(r#"{"task":"Sleep"}"#).unwrap();
/// assert_eq!(body.task, "Sleep");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTodo {
    /// What to do.
    pub task: String,
}

/// Creates the table if it is missing.
///
/// ```
/// assert!(bemi_examples::todo::CREATE_TABLE.starts_with("CREATE TABLE IF NOT EXISTS todo"));
/// ```
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS todo (id bigserial PRIMARY KEY, \
                                task text NOT NULL, is_completed boolean NOT NULL DEFAULT false)";

/// Inserts a todo (`$1`: the task) and returns it.
///
/// ```
/// assert!(bemi_examples::todo::INSERT.starts_with("INSERT INTO todo"));
/// ```
pub const INSERT: &str = "INSERT INTO todo (task) VALUES ($1) RETURNING id, task, is_completed";

/// Marks a todo (`$1`: its id) completed and returns it.
///
/// ```
/// assert!(bemi_examples::todo::COMPLETE.starts_with("UPDATE todo"));
/// ```
pub const COMPLETE: &str =
    "UPDATE todo SET is_completed = true WHERE id = $1 RETURNING id, task, is_completed";

/// Deletes a todo (`$1`: its id).
///
/// ```
/// assert!(bemi_examples::todo::DELETE.starts_with("DELETE FROM todo"));
/// ```
pub const DELETE: &str = "DELETE FROM todo WHERE id = $1";

/// Lists every todo, oldest first.
///
/// ```
/// assert!(bemi_examples::todo::LIST.starts_with("SELECT"));
/// ```
pub const LIST: &str = "SELECT id, task, is_completed FROM todo ORDER BY id";

/// The four queries of the REST apps, over some database library.
///
/// ```
/// fn takes<S: bemi_examples::todo::TodoStore>(_: S) {}
/// # fn run(pool: bemi_sqlx::BemiPool) { takes(pool); }
/// ```
pub trait TodoStore: Clone + Send + Sync + 'static {
    /// What a query can fail with.
    type Error: std::fmt::Display + Send;

    /// Inserts a todo.
    fn create(&self, task: &str) -> impl Future<Output = Result<Todo, Self::Error>> + Send;

    /// Marks a todo completed; `None` when there is no such todo.
    fn complete(&self, id: i64) -> impl Future<Output = Result<Option<Todo>, Self::Error>> + Send;

    /// Deletes a todo; `false` when there was no such todo.
    fn delete(&self, id: i64) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Every todo, oldest first.
    fn list(&self) -> impl Future<Output = Result<Vec<Todo>, Self::Error>> + Send;
}
