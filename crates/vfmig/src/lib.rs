//! The library half of the `vfmig` program: the commands of a VM's control socket
//! ([`control`]), typed once for both ends — the `vfmig vm run` process that serves them and
//! the `vfmig vm migrate | status` and `vfmig demo` commands (and the tests) that send them.
//!
//! Why here: the commands carry the migration engine's own types (its convergence policy
//! with its defaults, its status and statistics) and the VMM's (digests, vIOMMU counters).
//! The VMM's `control` module provides the framing (JSON lines, the `return` / `error`
//! envelope, the error classes) and sits below the migration engine, so it cannot name the
//! engine's types; this crate sits above both.

pub mod control;
