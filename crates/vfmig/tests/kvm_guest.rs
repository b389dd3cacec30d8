//! A KVM guest migrates with its devices and keeps running its own checks on the other side:
//! real `vfmig vm run` processes, real vCPUs, the guest program of `vfmig-guest`. Skipped (with
//! a message) where `/dev/kvm` cannot be opened.

#[allow(dead_code)] // each test binary uses a part of the helpers
mod common;

use common::*;
use serde_json::Value;

/// Two vCPUs stamping the working set as fast as they can, both devices driven.
const KVM_GUEST: &[&str] = &[
    "--guest",
    "kvm",
    "--vcpus",
    "2",
    "--dirty-rate",
    "1000000",
    "--working-set",
    "16M",
    "--device-ops",
    "500",
];

fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("skipped: /dev/kvm cannot be opened here");
    }
    ok
}

/// The `kvm` block of a VM's status.
fn kvm(vm: &VmProcess) -> Value {
    let status = vm.status();
    let report = status["kvm"].clone();
    assert!(
        report.is_object(),
        "{}: no KVM guest in {status}",
        vm.name()
    );
    report
}

fn counter(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {report}"))
}

/// Waits until the guest's own counters moved by at least the given amounts; asserts that it
/// found no error, no vCPU stopped and no device access failed meanwhile.
fn wait_for_checks(vm: &VmProcess, verified: u64, dma_irqs: u64, mtty_irqs: u64) -> Value {
    let before = kvm(vm);
    poll(
        &format!("{}: the KVM guest's checks to go on", vm.name()),
        || {
            let now = kvm(vm);
            assert_eq!(
                counter(&now, "errors"),
                0,
                "the guest found an error: {now}"
            );
            assert_eq!(
                counter(&now, "failed_exits"),
                0,
                "a device access failed: {now}"
            );
            assert!(now["vcpu_failure"].is_null(), "a vCPU stopped: {now}");
            let moved = |k: &str| counter(&now, k) - counter(&before, k);
            (moved("pages_verified") >= verified
                && moved("irq_dma") >= dma_irqs
                && moved("irq_mtty") >= mtty_irqs)
                .then_some(now)
        },
    )
}

/// Migrates `source` to a new destination process; returns the destination, running.
fn hop(dir: &TestDir, source: &VmProcess, name: &str) -> VmProcess {
    let port = free_port();
    let destination = VmProcess::destination(dir, name, port, KVM_GUEST);
    source.call("migrate", finite_migration(&to(port)));
    let done = source.wait_for_migration_end();
    assert_eq!(done["state"], "completed", "{done}");
    destination.wait_until("the incoming VM is built", |s| s["state"] == "paused");
    let (want, got) = (digest(source), digest(&destination));
    assert_eq!(
        got, want,
        "{name} differs from its source at the switch-over"
    );
    destination.call("cont", Value::Null);
    destination
}

#[test]
fn a_kvm_guest_keeps_its_own_checks_passing_with_interrupts_after_migration() {
    if !kvm_available() {
        return;
    }
    let dir = TestDir::new("kvm-checks");
    let source = VmProcess::source(&dir, "src", KVM_GUEST);
    wait_for_checks(&source, 500, 5, 5);
    let destination = hop(&dir, &source, "dst");
    // The guest verifies the pages it stamped before the migration as it comes round to them,
    // and its devices keep completing work by MSI.
    let report = wait_for_checks(&destination, 2_000, 20, 20);
    assert_eq!(counter(&report, "vcpus_started"), 2, "{report}");
}

#[test]
fn a_kvm_guest_migrates_there_and_back_three_times() {
    if !kvm_available() {
        return;
    }
    let dir = TestDir::new("kvm-pingpong");
    let mut at = VmProcess::source(&dir, "hop0", KVM_GUEST);
    wait_for_checks(&at, 200, 2, 2);
    for n in 1..=6 {
        let next = hop(&dir, &at, &format!("hop{n}"));
        wait_for_checks(&next, 200, 2, 2);
        at = next;
    }
}
