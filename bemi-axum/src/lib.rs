#![doc = include_str!("../README.md")]

pub mod layer;

pub use layer::{Bemi, BemiLayer, ResponseFuture};
