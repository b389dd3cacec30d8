//! The sample devices: real models whose state matters.

pub mod dma_engine;
pub mod mtty;
