//! Shared by the KVM tests: guest RAM, a VM booted with the guest program and a boot page,
//! a bus with no devices, vCPU threads, and the status page read while the guest runs.

#![allow(dead_code, unreachable_pub)]

use std::io;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vfmig_guest::layout::{BOOT_PAGE_GPA, PAGE_SIZE, STATUS_PAGE_GPA};
use vfmig_guest::{BootPage, IMAGE, StatusPage, Workloads};
use vfmig_kvm::{
    ExitHandler, KvmConfig, KvmVm, Memslot, RunEnd, RunError, Vcpu, VcpuControl, load_image,
    write_tables,
};
use zerocopy::{FromBytes, IntoBytes};

/// Guest RAM in the tests.
pub const RAM_SIZE: usize = 16 << 20;
/// The working set: 1 MiB above the scratch area.
pub const WS_BASE: u64 = 0x40_0000;
/// 256 pages: a pass takes a fraction of a second on the emulated CPU.
pub const WS_SIZE: u64 = 1 << 20;

/// Guest RAM: an anonymous shared mapping, unmapped on drop.
pub struct Ram {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: plain memory; the guest and the test share it only through volatile aligned words.
unsafe impl Send for Ram {}
// SAFETY: as above.
unsafe impl Sync for Ram {}

impl Ram {
    fn new(len: usize) -> Ram {
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
            base: NonNull::new(addr.cast()).expect("mmap gives a non-null address"),
            len,
        }
    }

    /// The RAM as bytes, before any vCPU runs.
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes and `&mut self` excludes other users here.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) }
    }

    /// The offset of the aligned word at `gpa`, which must be inside the RAM.
    fn word(&self, gpa: u64) -> usize {
        let at = usize::try_from(gpa).expect("a GPA inside the RAM");
        assert!(
            gpa.is_multiple_of(8) && at + 8 <= self.len,
            "word at {gpa:#x}"
        );
        at
    }

    pub fn read_u64(&self, gpa: u64) -> u64 {
        let at = self.word(gpa);
        // SAFETY: in bounds and aligned (checked); volatile because the guest writes it.
        unsafe { ptr::read_volatile(self.base.as_ptr().add(at).cast::<u64>()) }
    }

    pub fn write_u64(&self, gpa: u64, value: u64) {
        let at = self.word(gpa);
        // SAFETY: in bounds and aligned (checked); volatile because the guest reads it.
        unsafe { ptr::write_volatile(self.base.as_ptr().add(at).cast::<u64>(), value) }
    }

    /// The 4 KiB page at `gpa`, word by word.
    pub fn read_page(&self, gpa: u64) -> Vec<u64> {
        (0..PAGE_SIZE / 8)
            .map(|i| self.read_u64(gpa + 8 * i))
            .collect()
    }

    /// Writes a page read by [`Ram::read_page`] back.
    pub fn write_page(&self, gpa: u64, words: &[u64]) {
        for (i, w) in (0u64..).zip(words) {
            self.write_u64(gpa + 8 * i, *w);
        }
    }

    /// The status page as the guest has it now (each word read once, racily, as a VMM does).
    pub fn status(&self) -> StatusPage {
        let words: Vec<u64> = (0..size_of::<StatusPage>() as u64 / 8)
            .map(|i| self.read_u64(STATUS_PAGE_GPA + 8 * i))
            .collect();
        StatusPage::read_from_bytes(words.as_bytes()).expect("the status page's size")
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping `new` made.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The host's TSC ticks per second, measured over 100 ms: the guest's TSC runs at the same
/// rate (this KVM does not scale it).
pub fn tsc_hz() -> u64 {
    let (t0, c0) = (Instant::now(), rdtsc());
    thread::sleep(Duration::from_millis(100));
    let (c1, t1) = (rdtsc(), Instant::now());
    let ns = t1.duration_since(t0).as_nanos().max(1);
    u64::try_from(u128::from(c1 - c0) * 1_000_000_000 / ns).expect("a TSC rate fits u64")
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; it has no memory effects.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// A boot page for `vcpus` vCPUs dirtying the test working set (and nothing else),
/// unthrottled.
pub fn dirtier_boot_page(vcpus: u32) -> BootPage {
    let mut boot = BootPage::new(vcpus, RAM_SIZE as u64, tsc_hz(), Workloads::DIRTIER);
    boot.ws_base = WS_BASE;
    boot.ws_size = WS_SIZE;
    boot
}

/// A bus with no devices: configuration reads give all ones, writes go nowhere. Any other
/// port or any MMIO access fails the vCPU (the guest must not make one).
pub struct EmptyBus;

impl ExitHandler for EmptyBus {
    fn pio_read(&self, port: u16, data: &mut [u8]) -> io::Result<()> {
        match port {
            0xcf8..=0xcff => {
                data.fill(0xff);
                Ok(())
            }
            _ => Err(io::Error::other(format!("unexpected in from {port:#x}"))),
        }
    }
    fn pio_write(&self, port: u16, _: &[u8]) -> io::Result<()> {
        match port {
            0xcf8..=0xcff => Ok(()),
            _ => Err(io::Error::other(format!("unexpected out to {port:#x}"))),
        }
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

type VcpuThread = JoinHandle<(Vcpu, Result<RunEnd, RunError>)>;

/// The guest program running in a VM on an empty bus.
pub struct Guest {
    /// Dropped before `ram`: no memslot outlives its mapping.
    _vm: Arc<KvmVm>,
    pub ram: Arc<Ram>,
    pub control: VcpuControl,
    threads: Vec<VcpuThread>,
}

impl Guest {
    /// Boots the guest program with `boot` and runs every vCPU on its own thread.
    pub fn start(boot: BootPage) -> Guest {
        let mut ram = Ram::new(RAM_SIZE);
        write_tables(ram.bytes_mut()).expect("the boot tables");
        load_image(ram.bytes_mut(), IMAGE).expect("the guest image");
        let at = usize::try_from(BOOT_PAGE_GPA).expect("the boot page GPA");
        ram.bytes_mut()[at..at + size_of::<BootPage>()].copy_from_slice(boot.as_bytes());
        let ram = Arc::new(ram);

        let vm = Arc::new(KvmVm::new(KvmConfig::default()).expect("a KVM VM"));
        // SAFETY: `ram` lives in this Guest beside the VM, which `Drop` stops using first
        // (the vCPU threads are joined before either is dropped).
        unsafe {
            vm.add_memslot(Memslot {
                slot: 0,
                gpa: 0,
                host: ram.base.as_ptr() as u64,
                size: RAM_SIZE as u64,
                log_dirty: false,
            })
        }
        .expect("the RAM memslot");
        let control = VcpuControl::new();
        let handler: Arc<dyn ExitHandler> = Arc::new(EmptyBus);
        let threads = (0..boot.vcpus)
            .map(|i| {
                let mut vcpu = vm.create_vcpu(i).expect("a vCPU");
                vcpu.set_boot_state().expect("the boot state");
                let (handler, control) = (Arc::clone(&handler), control.clone());
                thread::spawn(move || {
                    let result = vcpu.run(handler.as_ref(), &control);
                    (vcpu, result)
                })
            })
            .collect();
        Guest {
            _vm: vm,
            ram,
            control,
            threads,
        }
    }

    /// Polls the status page until `f` holds or 20 s pass; returns the last status read.
    pub fn wait_for(&self, what: &str, f: impl Fn(&StatusPage) -> bool) -> StatusPage {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.ram.status();
            if f(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {status:#?}"
            );
            self.assert_running();
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Pauses the vCPUs at a moment when vCPU 0 (alone on the working set) is not in the
    /// middle of stamping `page`, so a change the test makes there is not half overwritten.
    pub fn pause_away_from(&self, page: u64) {
        let index = (page - WS_BASE) / PAGE_SIZE;
        loop {
            self.control.pause();
            // The page being stamped now is the one after the last counted.
            let busy = self.ram.status().vcpu[0].pages_written % (WS_SIZE / PAGE_SIZE);
            if busy != index {
                return;
            }
            self.control.resume();
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every vCPU loop is still running (a handler error would have ended one).
    fn assert_running(&self) {
        for t in &self.threads {
            assert!(!t.is_finished(), "a vCPU loop ended early");
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.control.stop();
        for t in self.threads.drain(..) {
            if let Ok((_, result)) = t.join()
                && !thread::panicking()
            {
                assert_eq!(result.expect("the run loop"), RunEnd::Stopped);
            }
        }
    }
}
