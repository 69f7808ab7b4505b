//! The faces of the engine: Rust's `GlobalAlloc` and the C entry points the
//! preload shim calls. Both only translate requests into size classes and
//! flags; everything below is shared.

pub mod capi;
pub mod global;
