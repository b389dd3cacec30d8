//! Interrupts and doorbells with real vCPUs: an MSI through irqfd and through
//! KVM_SIGNAL_MSI reaches the guest's handler (guest: `tests/guests/msi.S`, which counts
//! vector 0x40 at GPA 0x9000 while waiting in HLT); an ioeventfd takes a guest write
//! instead of the run loop (guest: `tests/guests/io.S`).

mod common;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{NoDevices, TestVm, spawn, stop, wait_for};
use vfmig_kvm::{Datamatch, DoorbellAddress, EventFd, ExitHandler, MsiMessage, VcpuControl};

const COUNT_GPA: u64 = 0x9000;
const READY_GPA: u64 = 0x9008;
/// Fixed delivery to APIC ID 0, vector 0x40.
const MSI: MsiMessage = MsiMessage {
    address: 0xFEE0_0000,
    data: 0x40,
};
const GSI: u32 = 24;

#[test]
fn an_msi_through_an_irqfd_reaches_the_guests_handler_once_per_signal() {
    let vm = TestVm::boot(guest!("msi"), 1);
    vm.vm.set_msi_route(GSI, MSI).unwrap();
    let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vm.vm.register_irqfd(&event, GSI).unwrap();
    let control = VcpuControl::new();
    let threads = spawn(vm.vcpus, Arc::new(NoDevices), &control);
    assert!(wait_for(Duration::from_secs(10), || vm
        .ram
        .read_u64(READY_GPA)
        == 1));
    let mut counts = Vec::new();
    for expected in 1..=3 {
        event.write(1).unwrap();
        wait_for(Duration::from_secs(10), || {
            vm.ram.read_u64(COUNT_GPA) == expected
        });
        counts.push(vm.ram.read_u64(COUNT_GPA));
    }
    stop(&control, threads);
    assert_eq!(counts, vec![1, 2, 3]);
}

#[test]
fn signal_msi_reaches_the_guests_handler() {
    let vm = TestVm::boot(guest!("msi"), 1);
    let control = VcpuControl::new();
    let threads = spawn(vm.vcpus, Arc::new(NoDevices), &control);
    assert!(wait_for(Duration::from_secs(10), || vm
        .ram
        .read_u64(READY_GPA)
        == 1));
    let mut counts = Vec::new();
    for expected in 1..=3 {
        assert!(vm.vm.signal_msi(MSI).unwrap(), "MSI not delivered");
        wait_for(Duration::from_secs(10), || {
            vm.ram.read_u64(COUNT_GPA) == expected
        });
        counts.push(vm.ram.read_u64(COUNT_GPA));
    }
    stop(&control, threads);
    assert_eq!(counts, vec![1, 2, 3]);
}

#[test]
fn an_msi_route_outside_the_msi_gsis_is_refused() {
    let vm = TestVm::boot(guest!("msi"), 1);
    assert!(vm.vm.set_msi_route(23, MSI).is_err());
    assert!(vm.vm.set_msi_route(4096, MSI).is_err());
}

/// Records the ports and addresses of the accesses that reach it.
#[derive(Default)]
struct Seen(Mutex<Vec<u64>>);

impl ExitHandler for Seen {
    fn pio_read(&self, port: u16, data: &mut [u8]) -> io::Result<()> {
        self.0.lock().unwrap().push(port.into());
        data.fill(0);
        Ok(())
    }
    fn pio_write(&self, port: u16, _: &[u8]) -> io::Result<()> {
        self.0.lock().unwrap().push(port.into());
        Ok(())
    }
    fn mmio_read(&self, gpa: u64, data: &mut [u8]) -> io::Result<()> {
        self.0.lock().unwrap().push(gpa);
        data.fill(0);
        Ok(())
    }
    fn mmio_write(&self, gpa: u64, _: &[u8]) -> io::Result<()> {
        self.0.lock().unwrap().push(gpa);
        Ok(())
    }
}

/// Runs io.S with one doorbell registered; returns the eventfd's count and the accesses
/// the handler saw.
fn run_with_doorbell(address: DoorbellAddress, datamatch: Datamatch) -> (u64, Vec<u64>) {
    let vm = TestVm::boot(guest!("io"), 1);
    let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vm.vm
        .register_ioeventfd(&event, address, datamatch)
        .unwrap();
    let seen = Arc::new(Seen::default());
    let control = VcpuControl::new();
    let threads = spawn(vm.vcpus, seen.clone(), &control);
    let done = wait_for(Duration::from_secs(10), || {
        seen.0.lock().unwrap().contains(&0xD000_0010)
    });
    stop(&control, threads);
    assert!(done, "guest did not finish");
    let count = event.read().unwrap_or(0);
    let accesses = seen.0.lock().unwrap().clone();
    (count, accesses)
}

#[test]
fn an_mmio_ioeventfd_with_datamatch_takes_the_matching_write_instead_of_the_handler() {
    let (count, accesses) =
        run_with_doorbell(DoorbellAddress::Mmio(0xD000_0000), Datamatch::U32(0xC0FFEE));
    assert_eq!(count, 1);
    assert!(!accesses.contains(&0xD000_0000), "{accesses:x?}");
}

#[test]
fn an_mmio_ioeventfd_leaves_a_non_matching_write_to_the_handler() {
    let (count, accesses) =
        run_with_doorbell(DoorbellAddress::Mmio(0xD000_0000), Datamatch::U32(1));
    assert_eq!(count, 0);
    assert!(accesses.contains(&0xD000_0000), "{accesses:x?}");
}

#[test]
fn a_pio_ioeventfd_takes_any_write_to_its_port() {
    let (count, accesses) = run_with_doorbell(DoorbellAddress::Pio(0x511), Datamatch::Any);
    assert_eq!(count, 1);
    assert!(!accesses.contains(&0x511), "{accesses:x?}");
}
