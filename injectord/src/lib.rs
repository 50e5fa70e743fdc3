//! injectord: an eBPF fault injector for NFV infrastructure.
//!
//! The daemon (`main.rs`) wires these together: [`spec`] parses fault
//! requests, [`target`] resolves them to cgroups, [`faults`] keeps the table
//! of active faults and drives the [`backend`]s through [`datapath`],
//! [`rpc`] and [`server`] expose it on the control socket, and [`metrics`]
//! exports the counters.

pub mod backend;
pub mod capabilities;
pub mod datapath;
pub mod errno;
pub mod error;
pub mod faults;
pub mod metrics;
pub mod reaper;
pub mod rpc;
pub mod server;
pub mod spec;
pub mod sys;
pub mod target;
