//! The OS layer: everything magpie asks of Linux and glibc, kept apart from the
//! allocator's logic. Nothing here allocates from the managed heap.

pub mod env;
pub mod fatal;
pub mod futex;
pub mod os;
pub mod owned;
pub mod rseq;
