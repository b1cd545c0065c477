//! skiff as a library: every component, so integration tests in `tests/` can start in-process
//! servers. The `skiff` binary (`main.rs`) only dispatches subcommands.

// The skeleton grows module by module; silence dead-code noise until the pieces are wired.
#![allow(dead_code)]

pub mod agent;
pub mod api;
#[cfg(feature = "bench")]
pub mod bench_support;
pub mod cli;
pub mod config;
pub mod controllers;
pub mod pki;
pub mod registry;
pub mod scheduler;
pub mod server;
pub mod store;
