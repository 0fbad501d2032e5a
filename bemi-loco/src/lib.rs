#![doc = include_str!("../README.md")]

pub mod initializer;
pub mod job;
pub mod task;

pub use initializer::{AppContextExt, BemiInitializer};
pub use job::{BemiArgs, BemiJob, PerformLaterWithContext, job_context};
pub use task::BemiTask;
