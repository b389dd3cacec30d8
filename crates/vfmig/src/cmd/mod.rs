//! One module per subcommand.

pub(crate) mod demo;
pub(crate) mod device;
mod handler;
// Until `vfmig tls` is registered in cli.rs and main.rs: then this `expect` goes.
#[expect(dead_code, reason = "`vfmig tls` is not yet registered in cli.rs")]
pub(crate) mod tls;
pub(crate) mod vm;
