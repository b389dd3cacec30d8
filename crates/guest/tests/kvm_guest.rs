//! The guest program under real KVM vCPUs on a bus with no devices: it starts, counts, stamps
//! and checks its working set, and finds pages that were changed behind its back.

mod common;

use common::{Guest, WS_BASE, WS_SIZE, dirtier_boot_page};
use vfmig_guest::layout::{PAGE_SIZE, STATUS_MAGIC, VCPU_RUNNING};
use vfmig_guest::{BootPage, ErrorCode, Workloads};

/// A page of the working set, well inside vCPU 0's slice.
const PAGE: u64 = WS_BASE + 200 * PAGE_SIZE;
/// Word 1 of a stamped page is its sequence number (the pass that wrote it).
const SEQ_WORD: u64 = 8;

#[test]
fn the_guest_reaches_its_loop_and_counts() {
    let guest = Guest::start(dirtier_boot_page(1));
    let first = guest.wait_for("vCPU 0 in its loop", |s| {
        s.magic == STATUS_MAGIC && s.vcpu[0].state == VCPU_RUNNING && s.vcpu[0].loops > 0
    });
    guest.wait_for("the loop to count on", |s| {
        s.vcpu[0].loops > first.vcpu[0].loops
    });
}

#[test]
fn a_bus_of_all_ones_has_no_devices() {
    let mut boot = dirtier_boot_page(1);
    boot.workloads = Workloads::ALL.0;
    let guest = Guest::start(boot);
    let status = guest.wait_for("vCPU 0 in its loop", |s| s.vcpu[0].state == VCPU_RUNNING);
    assert_eq!((status.devices, status.pci_functions), (0, 0));
    assert_eq!(status.errors, 0, "{:?}", status.first_error());
}

#[test]
fn stamped_pages_are_verified_on_the_next_pass_without_errors() {
    let guest = Guest::start(dirtier_boot_page(1));
    let pages = WS_SIZE / PAGE_SIZE;
    let status = guest.wait_for("a second pass", |s| s.vcpu[0].pages_verified >= pages);
    assert_eq!(status.errors, 0, "{:?}", status.first_error());
    assert!(status.vcpu[0].passes >= 1);
}

#[test]
fn every_vcpu_stamps_its_own_slice() {
    let guest = Guest::start(dirtier_boot_page(3));
    let status = guest.wait_for("a verified pass on every vCPU", |s| {
        s.vcpus_started == 3
            && s.vcpu[..3]
                .iter()
                .all(|v| v.passes >= 1 && v.pages_verified > 0)
    });
    assert_eq!(status.errors, 0, "{:?}", status.first_error());
    // Together the slices cover the working set: every page carries its own address.
    for page in (0..WS_SIZE / PAGE_SIZE).map(|i| WS_BASE + i * PAGE_SIZE) {
        assert_eq!(
            guest.ram.read_u64(page),
            page,
            "page {page:#x} is not stamped"
        );
    }
}

#[test]
fn a_page_zeroed_after_the_guest_wrote_it_is_reported_with_its_gpa() {
    let guest = Guest::start(dirtier_boot_page(1));
    guest.wait_for("the page stamped", |_| {
        guest.ram.read_u64(PAGE + SEQ_WORD) >= 1
    });
    guest.pause_away_from(PAGE);
    let seq = guest.ram.read_u64(PAGE + SEQ_WORD);
    guest.ram.write_page(PAGE, &[0; 512]);
    guest.control.resume();

    let status = guest.wait_for("an error", |s| s.first_error().is_some());
    let error = status.first_error().expect("an error");
    assert_eq!(error.code, Ok(ErrorCode::PageSeq), "{error}");
    assert_eq!((error.a, error.b, error.c), (PAGE, seq, 0), "{error}");
}

#[test]
fn a_page_older_than_the_guest_last_wrote_it_is_reported_with_its_gpa() {
    let guest = Guest::start(dirtier_boot_page(1));
    guest.wait_for("the page stamped", |_| {
        guest.ram.read_u64(PAGE + SEQ_WORD) >= 1
    });
    guest.pause_away_from(PAGE);
    let old = guest.ram.read_page(PAGE);
    guest.control.resume();
    let old_seq = old[1];
    guest.wait_for("the page stamped again", |_| {
        guest.ram.read_u64(PAGE + SEQ_WORD) == old_seq + 1
    });
    guest.pause_away_from(PAGE);
    guest.ram.write_page(PAGE, &old);
    guest.control.resume();

    let status = guest.wait_for("an error", |s| s.first_error().is_some());
    let error = status.first_error().expect("an error");
    assert_eq!(error.code, Ok(ErrorCode::PageSeq), "{error}");
    assert_eq!(
        (error.a, error.b, error.c),
        (PAGE, old_seq + 1, old_seq),
        "{error}"
    );
    assert_eq!(status.errors, 1);
}

#[test]
fn a_damaged_sampled_word_is_reported_with_its_gpa() {
    let guest = Guest::start(dirtier_boot_page(1));
    guest.wait_for("the page stamped", |_| {
        guest.ram.read_u64(PAGE + SEQ_WORD) >= 1
    });
    guest.pause_away_from(PAGE);
    let word = PAGE + 256 * 8;
    let good = guest.ram.read_u64(word);
    guest.ram.write_u64(word, !good);
    guest.control.resume();

    let status = guest.wait_for("an error", |s| s.first_error().is_some());
    let error = status.first_error().expect("an error");
    assert_eq!(error.code, Ok(ErrorCode::PageData), "{error}");
    assert_eq!(error.a, word, "{error}");
    assert_eq!(error.c, !good, "{error}");
}

#[test]
fn a_dirty_rate_caps_the_pages_stamped() {
    let mut boot = dirtier_boot_page(1);
    boot.dirty_rate = 100;
    let t0 = std::time::Instant::now();
    let guest = Guest::start(boot);
    guest.wait_for("vCPU 0 in its loop", |s| s.vcpu[0].state == VCPU_RUNNING);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let written = guest.ram.status().vcpu[0].pages_written;
    let elapsed_ms = u64::try_from(t0.elapsed().as_millis()).expect("a short test");
    // Paced by the TSC from the loop's start: never more than the rate allows since then
    // (one page is due at once), however late the vCPU thread ran.
    let most = 100 * elapsed_ms / 1000 + 1;
    assert!(
        written <= most,
        "{written} pages in {elapsed_ms} ms at 100 pages/s"
    );
    assert!(written > 0);
}

#[test]
fn a_wrong_boot_page_is_fatal() {
    let boot = BootPage {
        magic: 0x1234,
        ..dirtier_boot_page(1)
    };
    let guest = Guest::start(boot);
    let status = guest.wait_for("the fatal flag", |s| s.fatal == 1);
    let error = status.first_error().expect("an error");
    assert_eq!(error.code, Ok(ErrorCode::BootPage), "{error}");
    assert_eq!(error.a, 0x1234);
}
