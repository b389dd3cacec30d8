//! What the unit tests of this crate share: devices served by a thread of the test process
//! over a real socket, as a device process would serve them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use vfmig_device::server::{DeviceKind, ServeOptions, serve_with};

use crate::devices::{AttachedDevice, DeviceSpec};

/// A device of `kind` (`mtty`, `dma-engine`) served by a thread of this process, attached;
/// and its socket, for the test to remove.
pub(crate) fn served(kind: &str) -> (AttachedDevice, PathBuf) {
    served_with(kind, ServeOptions::default())
}

/// [`served`] with parts of the device left out.
pub(crate) fn served_with(kind: &str, options: ServeOptions) -> (AttachedDevice, PathBuf) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("vfmig-vmm-{}-{n}.sock", std::process::id()));
    let device = DeviceKind::parse(kind).unwrap();
    let socket = path.clone();
    std::thread::spawn(move || serve_with(device, options, &socket));
    let spec = DeviceSpec::socket(format!("{kind}{n}"), &path);
    (AttachedDevice::connect(spec, &path).unwrap(), path)
}
