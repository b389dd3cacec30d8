//! Shared by the KVM tests: guest RAM as an anonymous shared mapping, a VM booted with one
//! of the guests of `tests/guests`, and vCPU threads.

#![allow(dead_code, unreachable_pub)]

use std::io;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vfmig_kvm::{
    ExitHandler, KvmConfig, KvmVm, Memslot, RunEnd, RunError, Vcpu, VcpuControl, load_image,
    write_tables,
};

/// The flat binary of guest `name` (built by build.rs from `tests/guests/<name>.S`).
#[macro_export]
macro_rules! guest {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".bin"))
    };
}

/// Guest RAM: an anonymous shared mapping, unmapped on drop.
pub struct Ram {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; the guest and the test touch it concurrently only
// through volatile accesses of aligned words.
unsafe impl Send for Ram {}
// SAFETY: as above.
unsafe impl Sync for Ram {}

impl Ram {
    pub fn new(len: usize) -> Ram {
        // SAFETY: a fresh anonymous mapping; the result is checked.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "{}", io::Error::last_os_error());
        Ram {
            base: NonNull::new(addr.cast()).unwrap(),
            len,
        }
    }

    pub fn host(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The RAM as bytes, while no vCPU runs.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes and `&mut self` excludes other users here.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) }
    }

    /// The offset of an aligned u64 at `gpa`, checked to lie inside the RAM.
    fn word_at(&self, gpa: u64) -> usize {
        let at = usize::try_from(gpa).unwrap();
        assert!(at.is_multiple_of(8) && at + 8 <= self.len);
        at
    }

    pub fn read_u64(&self, gpa: u64) -> u64 {
        let at = self.word_at(gpa);
        // SAFETY: in bounds and aligned (checked); volatile because the guest writes it.
        unsafe { ptr::read_volatile(self.base.as_ptr().add(at).cast::<u64>()) }
    }

    pub fn write_u64(&self, gpa: u64, value: u64) {
        let at = self.word_at(gpa);
        // SAFETY: in bounds and aligned (checked); volatile because the guest reads it.
        unsafe { ptr::write_volatile(self.base.as_ptr().add(at).cast::<u64>(), value) }
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping `new` made.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A VM with RAM in slot 0 at GPA 0, the boot tables, an image and `vcpus` vCPUs at the
/// contract's entry.
pub struct TestVm {
    pub vm: Arc<KvmVm>,
    pub ram: Ram,
    pub vcpus: Vec<Vcpu>,
}

pub const RAM_SIZE: usize = 8 << 20;

impl TestVm {
    pub fn boot(image: &[u8], vcpus: u32) -> TestVm {
        TestVm::boot_with(image, vcpus, KvmConfig::default(), |_| {})
    }

    /// Boots with `config`; `prepare` writes into RAM (the boot page, say) before the
    /// vCPUs are created.
    pub fn boot_with(
        image: &[u8],
        vcpus: u32,
        config: KvmConfig,
        prepare: impl FnOnce(&mut [u8]),
    ) -> TestVm {
        let mut ram = Ram::new(RAM_SIZE);
        write_tables(ram.bytes_mut()).unwrap();
        load_image(ram.bytes_mut(), image).unwrap();
        prepare(ram.bytes_mut());
        let (vm, vcpus) = TestVm::fresh_vm(&ram, vcpus, config);
        for vcpu in &vcpus {
            vcpu.set_boot_state().unwrap();
        }
        TestVm { vm, ram, vcpus }
    }

    /// A VM over `ram` with `vcpus` vCPUs in KVM's reset state.
    pub fn fresh_vm(ram: &Ram, vcpus: u32, config: KvmConfig) -> (Arc<KvmVm>, Vec<Vcpu>) {
        let vm = Arc::new(KvmVm::new(config).unwrap());
        // SAFETY: `ram` outlives the VM in every test (both live in one TestVm, the VM
        // dropped with it, or `ram` outlives the test's VM by construction).
        unsafe {
            vm.add_memslot(Memslot {
                slot: 0,
                gpa: 0,
                host: ram.host(),
                size: ram.len() as u64,
                log_dirty: false,
            })
        }
        .unwrap();
        let vcpus = (0..vcpus).map(|i| vm.create_vcpu(i).unwrap()).collect();
        (vm, vcpus)
    }
}

/// Runs each vCPU on its own thread; each thread gives its vCPU back when its loop ends.
pub fn spawn(
    vcpus: Vec<Vcpu>,
    handler: Arc<dyn ExitHandler>,
    control: &VcpuControl,
) -> Vec<JoinHandle<(Vcpu, Result<RunEnd, RunError>)>> {
    vcpus
        .into_iter()
        .map(|mut vcpu| {
            let handler = Arc::clone(&handler);
            let control = control.clone();
            thread::spawn(move || {
                let result = vcpu.run(handler.as_ref(), &control);
                (vcpu, result)
            })
        })
        .collect()
}

/// Stops the loops and returns the vCPUs, asserting each loop ended by the stop.
pub fn stop(
    control: &VcpuControl,
    threads: Vec<JoinHandle<(Vcpu, Result<RunEnd, RunError>)>>,
) -> Vec<Vcpu> {
    control.stop();
    threads
        .into_iter()
        .map(|thread| {
            let (vcpu, result) = thread.join().unwrap();
            assert_eq!(result.unwrap(), RunEnd::Stopped);
            vcpu
        })
        .collect()
}

/// Polls `f` until it is true or `timeout` passes; returns whether it became true.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(2));
    }
    f()
}

/// A handler that fails every access: for guests that make none.
pub struct NoDevices;

impl ExitHandler for NoDevices {
    fn pio_read(&self, port: u16, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other(format!("unexpected in from {port:#x}")))
    }
    fn pio_write(&self, port: u16, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other(format!("unexpected out to {port:#x}")))
    }
    fn mmio_read(&self, gpa: u64, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other(format!(
            "unexpected MMIO read at {gpa:#x}"
        )))
    }
    fn mmio_write(&self, gpa: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other(format!(
            "unexpected MMIO write at {gpa:#x}"
        )))
    }
}
