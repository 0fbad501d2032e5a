#![doc = include_str!("../README.md")]

pub mod hoop;

pub use hoop::Bemi;
