//! `missive-bench` as a library: scenarios, the edge process it may spawn, the loss/order
//! tracker and the report. The binary (`main.rs`) is a thin CLI over it.

#![forbid(unsafe_code)]

pub mod edge_process;
pub mod fleet;
pub mod flood;
pub mod payload;
pub mod raw;
pub mod remote;
pub mod report;
pub mod scenario;
pub mod tls_copy;
pub mod tracker;
