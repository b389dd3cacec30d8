//! The sample devices: real models whose state matters.

pub mod mtty;
