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

/// Waits until the guest's own counters moved by at least the given amounts (as many checks
/// of the dma-engine's BAR4, and as many interrupts on its second MSI-X vector, as on its
/// first: one each per device round); asserts that the guest drives the dma-engine by MSI-X
/// and found no error, no vCPU stopped and no device access failed meanwhile.
fn wait_for_checks(vm: &VmProcess, verified: u64, dma_irqs: u64, mtty_irqs: u64) -> Value {
    let before = kvm(vm);
    let now = poll(
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
                && moved("shared_checked") >= dma_irqs
                && moved("irq_dma_vector1") >= dma_irqs
                && moved("irq_mtty") >= mtty_irqs)
                .then_some(now)
        },
    );
    assert_eq!(
        now["dma_msix"], true,
        "the guest fell back from MSI-X: {now}"
    );
    now
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

/// The dma-engine's BAR4 (memory it lets its client map) in `vm`'s status.
fn dma_bar4(vm: &VmProcess) -> Value {
    let status = vm.status();
    let device = status["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["id"] == "dmaengine0"))
        .unwrap_or_else(|| panic!("no dmaengine0 in {status}"));
    device["bars"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["index"] == 4))
        .unwrap_or_else(|| panic!("no BAR4 in {device}"))
        .clone()
}

#[test]
fn on_the_destination_the_guest_reaches_the_mappable_bar_without_exits() {
    if !kvm_available() {
        return;
    }
    let dir = TestDir::new("kvm-direct");
    let source = VmProcess::source(&dir, "src", KVM_GUEST);
    wait_for_checks(&source, 200, 2, 2);
    let destination = hop(&dir, &source, "dst");
    // The guest checks a BAR4 block it stamped on the source, then stamps more, all without
    // an exit: the destination mapped its own device's BAR4 where the guest had put it.
    wait_for_checks(&destination, 200, 5, 2);
    let bar = dma_bar4(&destination);
    assert_eq!(bar["trapped"], 0, "{bar}");
    assert!(bar["address"].is_u64(), "BAR4 does not decode: {bar}");
    assert_eq!(
        bar["direct"],
        serde_json::json!([[0, 65536, bar["address"]]]),
        "{bar}"
    );
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

/// Two vCPUs stamping a 4 MiB working set as fast as they can (about 2 500 pages a second
/// here, 10 MiB/s), both devices driven: over a link capped at [`LINK_MIB`] MiB/s every
/// iteration (a second or so) finds the whole working set dirty again, an expected downtime
/// of about a second, far over the 300 ms limit. Throttled to 5 %, the guest dirties less
/// than the link carries, and what it leaves shrinks below the limit in a few iterations.
const OUT_RUNNING_GUEST: &[&str] = &[
    "--guest",
    "kvm",
    "--vcpus",
    "2",
    "--dirty-rate",
    "1000000",
    "--working-set",
    "4M",
    "--device-ops",
    "500",
];

/// The link's cap for [`OUT_RUNNING_GUEST`], in MiB/s.
const LINK_MIB: u64 = 4;

/// How long a migration over the capped link may take: the throttle needs some ten
/// iterations of a second or two to come down to its floor.
const SLOW_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// Polls the migration until it ends, for at most [`SLOW_DEADLINE`].
fn wait_for_slow_migration_end(source: &VmProcess) -> Value {
    let start = std::time::Instant::now();
    loop {
        let m = source.migration();
        if matches!(
            m["state"].as_str(),
            Some("completed" | "failed" | "cancelled" | "unconfirmed")
        ) {
            return m;
        }
        assert!(
            start.elapsed() < SLOW_DEADLINE,
            "the migration did not end within {SLOW_DEADLINE:?}: {m}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The vCPU run percentage of each pre-copy iteration in a migration's status.
fn run_percents(migration: &Value) -> Vec<u64> {
    migration["iterations"]
        .as_array()
        .unwrap_or_else(|| panic!("no iterations in {migration}"))
        .iter()
        .map(|it| it["run_percent"].as_u64().expect("a run percentage"))
        .collect()
}

#[test]
fn a_guest_dirtying_faster_than_the_link_converges_with_auto_converge() {
    if !kvm_available() {
        return;
    }
    let dir = TestDir::new("kvm-converge");
    let source = VmProcess::source(&dir, "src", OUT_RUNNING_GUEST);
    wait_for_checks(&source, 200, 2, 2);
    let port = free_port();
    let destination = VmProcess::destination(&dir, "dst", port, OUT_RUNNING_GUEST);

    source.call(
        "migrate",
        serde_json::json!({ "to": to(port), "max_bandwidth_mib": LINK_MIB }),
    );
    let done = wait_for_slow_migration_end(&source);

    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["stats"]["switchover"], "converged", "{done}");
    // The throttle rose step by step: never eased, and the guest was slowed before the end.
    let percents = run_percents(&done);
    assert!(percents.windows(2).all(|w| w[1] <= w[0]), "{percents:?}");
    assert!(
        percents.last() < Some(&100),
        "never throttled: {percents:?}"
    );
    destination.wait_until("the incoming VM is built", |s| s["state"] == "paused");
    destination.call("cont", Value::Null);
    let report = wait_for_checks(&destination, 200, 2, 2);
    assert_eq!(
        counter(&report, "throttle_percent"),
        100,
        "the destination's guest runs throttled: {report}"
    );
}

#[test]
fn without_auto_converge_a_guest_out_running_the_link_fails_at_the_limit_and_runs_on() {
    if !kvm_available() {
        return;
    }
    let dir = TestDir::new("kvm-limit");
    let source = VmProcess::source(&dir, "src", OUT_RUNNING_GUEST);
    wait_for_checks(&source, 200, 2, 2);
    let port = free_port();
    let mut destination = VmProcess::destination(&dir, "dst", port, OUT_RUNNING_GUEST);

    source.call(
        "migrate",
        serde_json::json!({ "to": to(port), "max_bandwidth_mib": LINK_MIB,
            "auto_converge": false, "max_iterations": 4 }),
    );
    let failed = wait_for_slow_migration_end(&source);

    assert_eq!(failed["state"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the iteration limit (4 iterations)"),
        "the error does not name the limit: {failed}"
    );
    assert_eq!(run_percents(&failed), [100; 4], "{failed}");
    // The guest runs on here, at full speed, its own checks passing.
    assert_eq!(source.status()["state"], "running");
    let report = wait_for_checks(&source, 200, 2, 2);
    assert_eq!(counter(&report, "throttle_percent"), 100, "{report}");
    // The destination discards what it received and never runs it.
    assert!(!destination.wait_for_exit().success());
}
