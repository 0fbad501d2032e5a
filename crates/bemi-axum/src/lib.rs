//! bemi-axum
