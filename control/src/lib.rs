//! afgate's control side: configuration, bringing the dataplane up, the CLI.

pub mod config;
pub mod run;
pub mod runtime;
pub mod stats;
