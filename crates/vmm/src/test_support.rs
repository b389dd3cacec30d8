//! What the unit tests of this crate share: devices served by a thread of the test process
//! over a real socket, as a device process would serve them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use vfmig_device::server::{DeviceKind, serve};

use crate::devices::{AttachedDevice, DeviceSpec};

/// A device of `kind` (`mtty`, `dma-engine`) served by a thread of this process, attached;
/// and its socket, for the test to remove.
pub(crate) fn served(kind: &str) -> (AttachedDevice, PathBuf) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("vfmig-vmm-{}-{n}.sock", std::process::id()));
    let device = DeviceKind::parse(kind).unwrap();
    let socket = path.clone();
    std::thread::spawn(move || serve(device, &socket));
    let spec = DeviceSpec {
        id: format!("{kind}{n}"),
        kind: kind.into(),
        args: Vec::new(),
    };
    (AttachedDevice::connect(spec, &path).unwrap(), path)
}
