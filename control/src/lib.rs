//! afgate's control side: configuration, bringing the dataplane up, the CLI.

pub mod api;
pub mod capture;
pub mod client;
pub mod config;
pub mod ctl;
#[doc(hidden)]
pub mod fuzz;
pub mod handover;
pub mod inproc;
pub mod k8s;
pub mod metrics;
pub mod neigh_ctl;
pub mod reload;
pub mod run;
pub mod runtime;
pub mod stats;
pub mod trace;
