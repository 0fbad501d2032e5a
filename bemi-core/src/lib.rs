#![doc = include_str!("../README.md")]

pub mod carrier;
pub mod context;
pub mod integration;
mod local;
pub mod migration;
pub mod protocol;
pub mod signing;
pub mod sql;

#[cfg(feature = "opentelemetry")]
pub mod trace;

pub use context::{Context, ContextExt, IntoContext};
