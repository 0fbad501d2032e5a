#![doc = include_str!("../README.md")]

pub mod middleware;

pub use middleware::{Bemi, BemiEndpoint};
