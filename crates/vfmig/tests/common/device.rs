//! A `vfmig device` process driven by the vfio-user client, with no VMM: the client is the
//! test.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use vfmig_vfio_user::{Client, ClientConfig};

/// A device process, killed when dropped.
pub(crate) struct DeviceProcess {
    child: Child,
    socket: PathBuf,
}

impl DeviceProcess {
    pub(crate) fn start(args: &[&str], name: &str) -> Self {
        let socket = std::env::temp_dir().join(format!("vfmig-{}-{name}.sock", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_vfmig"))
            .arg("device")
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start vfmig device");
        DeviceProcess { child, socket }
    }

    pub(crate) fn connect(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Client::connect(&self.socket, ClientConfig::default()) {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => {
                    panic!("connect {}: {e}", self.socket.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl DeviceProcess {
    /// True while the process has not exited.
    pub(crate) fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Writes the low `len` bytes of `v` at `offset` of BAR0.
pub(crate) fn reg_write(c: &Client, offset: u64, v: u64, len: usize) {
    c.region_write(0, offset, &v.to_le_bytes()[..len]).unwrap();
}

/// Reads `len` bytes at `offset` of BAR0, little-endian.
pub(crate) fn reg_read(c: &Client, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    c.region_read(0, offset, &mut b[..len]).unwrap();
    u64::from_le_bytes(b)
}
