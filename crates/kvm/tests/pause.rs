//! Pause, resume and throttle with a real vCPU spinning in a loop (guest:
//! `tests/guests/counter.S`, vCPU i counting at GPA 0x9000 + 8 i).

mod common;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{NoDevices, TestVm, spawn, stop, wait_for};
use vfmig_kvm::{Throttle, VcpuControl};

const COUNTER_GPA: u64 = 0x9000;

#[test]
fn a_paused_vcpu_runs_no_guest_instruction() {
    let vm = TestVm::boot(guest!("counter"), 2);
    let control = VcpuControl::new();
    let threads = spawn(vm.vcpus, Arc::new(NoDevices), &control);
    assert!(wait_for(Duration::from_secs(10), || {
        vm.ram.read_u64(COUNTER_GPA) > 0 && vm.ram.read_u64(COUNTER_GPA + 8) > 0
    }));
    control.pause();
    let at_pause = [
        vm.ram.read_u64(COUNTER_GPA),
        vm.ram.read_u64(COUNTER_GPA + 8),
    ];
    thread::sleep(Duration::from_millis(200));
    let later = [
        vm.ram.read_u64(COUNTER_GPA),
        vm.ram.read_u64(COUNTER_GPA + 8),
    ];
    stop(&control, threads);
    assert_eq!(at_pause, later);
}

#[test]
fn a_resumed_vcpu_continues_counting() {
    let vm = TestVm::boot(guest!("counter"), 1);
    let control = VcpuControl::new();
    let threads = spawn(vm.vcpus, Arc::new(NoDevices), &control);
    assert!(wait_for(Duration::from_secs(10), || vm
        .ram
        .read_u64(COUNTER_GPA)
        > 0));
    control.pause();
    let at_pause = vm.ram.read_u64(COUNTER_GPA);
    control.resume();
    let moved = wait_for(Duration::from_secs(10), || {
        vm.ram.read_u64(COUNTER_GPA) > at_pause
    });
    stop(&control, threads);
    assert!(moved);
}

#[test]
fn a_throttled_vcpu_stands_still_in_each_off_phase() {
    let vm = TestVm::boot(guest!("counter"), 1);
    let control = VcpuControl::new();
    let threads = spawn(vm.vcpus, Arc::new(NoDevices), &control);
    assert!(wait_for(Duration::from_secs(10), || vm
        .ram
        .read_u64(COUNTER_GPA)
        > 0));
    control
        .set_throttle(Some(Throttle {
            run_percent: 20,
            period: Duration::from_millis(200),
        }))
        .unwrap();
    // Sample for three periods: the longest stretch without a change must be most of an
    // off phase (160 ms), and the counter must still have moved.
    let start = vm.ram.read_u64(COUNTER_GPA);
    let mut last = (start, Instant::now());
    let mut longest_still = Duration::ZERO;
    let end = Instant::now() + Duration::from_millis(600);
    while Instant::now() < end {
        let value = vm.ram.read_u64(COUNTER_GPA);
        if value != last.0 {
            last = (value, Instant::now());
        }
        longest_still = longest_still.max(last.1.elapsed());
        thread::sleep(Duration::from_millis(2));
    }
    let moved = vm.ram.read_u64(COUNTER_GPA) > start;
    stop(&control, threads);
    assert!(
        longest_still >= Duration::from_millis(100),
        "{longest_still:?}"
    );
    assert!(moved);
}
