//! One module per subcommand.

pub(crate) mod demo;
pub(crate) mod device;
pub(crate) mod device_spec;
mod handler;
pub(crate) mod tls;
pub(crate) mod vm;
