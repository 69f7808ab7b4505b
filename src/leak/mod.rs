//! Leak detection (`MAGPIE_GC=leakcheck`): allocation sites and the report.

pub mod symbolize;
pub mod unwind;
