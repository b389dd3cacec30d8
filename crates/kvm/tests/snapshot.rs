//! vCPU and VM state with real vCPUs: a snapshot of a running guest, restored into a fresh
//! VM over a copy of its RAM, continues the guest where it was.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{NoDevices, RAM_SIZE, Ram, TestVm, spawn, stop, wait_for};
use vfmig_kvm::{EventFd, KvmConfig, MsiMessage, Snapshot, VcpuControl, VcpuStateHandle};

const COUNTER_GPA: u64 = 0x9000;

/// Pauses the running guest, snapshots it through bytes, copies its RAM, and restores both
/// into a fresh VM; returns the new VM (not yet running) and its vCPUs.
fn migrate(vm: &TestVm, handles: &[VcpuStateHandle], control: &VcpuControl) -> (TestVm, Vec<u8>) {
    control.pause();
    let bytes = vm.vm.save_state(handles).unwrap().to_bytes();
    let mut ram = Ram::new(RAM_SIZE);
    // The guest is paused: its RAM does not change while it is copied.
    let source: Vec<u8> = (0..RAM_SIZE as u64 / 8)
        .flat_map(|i| vm.ram.read_u64(i * 8).to_le_bytes())
        .collect();
    ram.bytes_mut().copy_from_slice(&source);
    let (new_vm, vcpus) = TestVm::fresh_vm(
        &ram,
        u32::try_from(handles.len()).unwrap(),
        KvmConfig::default(),
    );
    let new_handles: Vec<_> = vcpus
        .iter()
        .map(|vcpu| vcpu.state_handle(&new_vm).unwrap())
        .collect();
    let snapshot = Snapshot::from_bytes(&bytes).unwrap();
    new_vm.restore_state(&new_handles, &snapshot).unwrap();
    (
        TestVm {
            vm: new_vm,
            ram,
            vcpus,
        },
        bytes,
    )
}

#[test]
fn a_restored_snapshot_continues_the_guests_loop_from_where_it_was() {
    let vm = TestVm::boot(guest!("counter"), 2);
    let handles: Vec<_> = vm
        .vcpus
        .iter()
        .map(|vcpu| vcpu.state_handle(&vm.vm).unwrap())
        .collect();
    let control = VcpuControl::new();
    let threads = spawn(vm.vcpus, Arc::new(NoDevices), &control);
    assert!(wait_for(Duration::from_secs(10), || {
        vm.ram.read_u64(COUNTER_GPA) > 1000 && vm.ram.read_u64(COUNTER_GPA + 8) > 1000
    }));
    let source = TestVm {
        vm: vm.vm,
        ram: vm.ram,
        vcpus: Vec::new(),
    };
    let (restored, _) = migrate(&source, &handles, &control);
    let at_snapshot = [
        restored.ram.read_u64(COUNTER_GPA),
        restored.ram.read_u64(COUNTER_GPA + 8),
    ];
    stop(&control, threads);
    // The counter lives in RBX: if the registers were not restored it would restart at 1.
    restored.ram.write_u64(COUNTER_GPA, 0);
    restored.ram.write_u64(COUNTER_GPA + 8, 0);
    let control = VcpuControl::new();
    let threads = spawn(restored.vcpus, Arc::new(NoDevices), &control);
    let continued = wait_for(Duration::from_secs(10), || {
        restored.ram.read_u64(COUNTER_GPA) > at_snapshot[0]
            && restored.ram.read_u64(COUNTER_GPA + 8) > at_snapshot[1]
    });
    stop(&control, threads);
    assert!(continued, "counters {at_snapshot:?} did not continue");
}

#[test]
fn interrupts_reach_the_restored_guest() {
    const MSI: MsiMessage = MsiMessage {
        address: 0xFEE0_0000,
        data: 0x40,
    };
    let vm = TestVm::boot(guest!("msi"), 1);
    let handles: Vec<_> = vm
        .vcpus
        .iter()
        .map(|vcpu| vcpu.state_handle(&vm.vm).unwrap())
        .collect();
    let control = VcpuControl::new();
    let threads = spawn(vm.vcpus, Arc::new(NoDevices), &control);
    assert!(wait_for(Duration::from_secs(10), || vm
        .ram
        .read_u64(0x9008)
        == 1));
    vm.vm.signal_msi(MSI).unwrap();
    assert!(wait_for(Duration::from_secs(10), || vm
        .ram
        .read_u64(COUNTER_GPA)
        == 1));
    let source = TestVm {
        vm: vm.vm,
        ram: vm.ram,
        vcpus: Vec::new(),
    };
    let (restored, _) = migrate(&source, &handles, &control);
    stop(&control, threads);
    restored.vm.set_msi_route(24, MSI).unwrap();
    let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    restored.vm.register_irqfd(&event, 24).unwrap();
    let control = VcpuControl::new();
    let threads = spawn(restored.vcpus, Arc::new(NoDevices), &control);
    event.write(1).unwrap();
    let taken = wait_for(Duration::from_secs(10), || {
        restored.ram.read_u64(COUNTER_GPA) == 2
    });
    stop(&control, threads);
    assert!(taken, "count {}", restored.ram.read_u64(COUNTER_GPA));
}

#[test]
fn a_snapshot_into_a_vm_with_another_vcpu_count_is_refused() {
    let vm = TestVm::boot(guest!("counter"), 2);
    let handles: Vec<_> = vm
        .vcpus
        .iter()
        .map(|vcpu| vcpu.state_handle(&vm.vm).unwrap())
        .collect();
    let snapshot = vm.vm.save_state(&handles).unwrap();
    assert!(vm.vm.restore_state(&handles[..1], &snapshot).is_err());
}
