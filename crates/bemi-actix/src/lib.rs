//! bemi-actix
