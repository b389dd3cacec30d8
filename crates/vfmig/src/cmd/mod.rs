//! One module per subcommand.

pub(crate) mod demo;
pub(crate) mod device;
mod handler;
pub(crate) mod tls;
pub(crate) mod vm;
