//! Pre-copy's limits, seen by the engine over a real TCP connection.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use vfmig_migration::engine::{DowntimeLimit, Limit, MigrationError, Progress, migrate, receive};
use vfmig_migration::transport::listen;
use vfmig_vmm::{DeviceHost, Vm, VmConfig};

const RAM: u64 = 32 << 20;

#[test]
fn a_first_pass_slower_than_the_time_limit_is_stopped_at_the_limit() {
    let dir = std::env::temp_dir().join(format!("vfmig-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // No device: the program is never run.
    let host = DeviceHost {
        program: PathBuf::from("vfmig"),
        dir: dir.clone(),
        viommu: false,
    };
    let vm = Vm::build(VmConfig::with_memory(RAM, vec![]).unwrap(), &host, true).unwrap();
    for gpa in (0..RAM).step_by(4096) {
        vm.ram().write(gpa, &(gpa | 1).to_le_bytes()).unwrap();
    }
    // 32 MiB of data at 1 MiB/s: the first pass alone would take some 30 s.
    let mut policy = DowntimeLimit {
        max_time: Duration::from_millis(500),
        max_bandwidth: Some(1 << 20),
        ..DowntimeLimit::default()
    };
    let listener = listen(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let to = listener.address().clone();
    let start = Instant::now();
    let (sent, received) = thread::scope(|s| {
        let receiving = s.spawn(|| receive(&listener, &host).map(|_| ()));
        let sent = migrate(&vm, &to, &mut policy, &Progress::new());
        (sent, receiving.join().unwrap())
    });
    let took = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);

    match sent {
        Err(MigrationError::NotConverged {
            limit: Limit::Time(limit),
            left,
            ..
        }) => {
            assert_eq!(limit, Duration::from_millis(500));
            assert!(0 < left && left < RAM, "{left} of {RAM} bytes said left");
        }
        other => panic!("expected the time limit, got {other:?}"),
    }
    assert!(
        took < Duration::from_secs(10),
        "stopped only after {took:?}"
    );
    assert!(
        received.is_err(),
        "the destination took a VM from a failed migration"
    );
}
