//! injectord: an eBPF fault injector for NFV infrastructure.
//!
//! The daemon (`main.rs`) wires these together: [`spec`] parses fault
//! requests (the envelope; each [`family`] parses its own `fault` object),
//! [`target`] resolves them to cgroups, [`faults`] keeps the table of
//! active faults and hands each to its family, which installs it through
//! the shared [`kernel`] pieces; [`rpc`] and [`server`] expose it on the
//! control socket, and [`metrics`] exports the counters.

pub mod capabilities;
pub mod errno;
pub mod error;
pub mod experiment;
pub mod family;
pub mod faults;
pub mod kernel;
pub mod metrics;
pub mod rpc;
pub mod server;
pub mod spec;
pub mod sys;
pub mod target;
