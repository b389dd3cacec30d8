//! Helpers for the process tests: `vfmig vm run` processes driven through their control
//! sockets, a directory per test, polling with deadlines, ([`device`]) a lone device process
//! driven by the vfio-user client, and ([`proxy`]) a TCP relay that corrupts the migration
//! stream.
//!
//! Every process runs with `TMPDIR` set to the test's directory, so its device sockets land
//! there too, and is killed when its guard drops (its device processes die with it: the VMM
//! spawns them with `PR_SET_PDEATHSIG`). A failing test prints each VM's log.

pub(crate) mod device;
pub(crate) mod proxy;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vfmig_vmm::control::{RequestError, request};

/// The longest anything may take before it counts as a failure: generous, for a debug build
/// on a loaded 2-core machine. Tests poll; none waits this long when things work.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// Source and destination VM: 256 MiB of RAM, an mtty and a dma-engine with 4 MiB of
/// device RAM, each device in its own process.
const VM_ARGS: &[&str] = &["--mem", "256M", "--dma-ram-mib", "4"];

/// The devices of [`VM_ARGS`]' VMs.
const VM_DEVICES: &[&str] = &["--device", "mtty", "--device", "dma-engine"];

/// A guest that keeps pre-copy busy: 50 000 page writes per second over 64 MiB (a KVM guest
/// on this machine's emulating KVM manages about 2 000: as fast as it can), and both devices
/// driven 500 times a second.
pub(crate) const BUSY_GUEST: &[&str] = &[
    "--dirty-rate",
    "50000",
    "--working-set",
    "64M",
    "--device-ops",
    "500",
];

/// A guest that keeps both devices busy and dirties a small working set.
pub(crate) const DEVICES_GUEST: &[&str] = &[
    "--dirty-rate",
    "20000",
    "--working-set",
    "16M",
    "--device-ops",
    "200",
];

/// Migration arguments that never converge: with a downtime limit of 0 the switch-over
/// needs a sync that finds nothing dirty, which a guest writing 50 000 pages a second never
/// allows, and the iteration limit is out of reach. Pre-copy goes on (until the engine's
/// 120 s time limit fails it) until the test intervenes.
pub(crate) fn endless_migration(to: &str) -> Value {
    json!({ "to": to, "downtime_ms": 0, "max_iterations": 1_000_000 })
}

/// The address of a destination listening on `port` of 127.0.0.1.
pub(crate) fn to(port: u16) -> String {
    format!("tcp:127.0.0.1:{port}")
}

/// The VM's digests (RAM and every device), through its control socket.
pub(crate) fn digest(vm: &VmProcess) -> vfmig_vmm::VmDigest {
    serde_json::from_value(vm.call("digest", Value::Null)).expect("a digest")
}

/// Migration arguments that finish soon: the default downtime limit, at most 8 iterations.
pub(crate) fn finite_migration(to: &str) -> Value {
    json!({ "to": to, "downtime_ms": 300, "max_iterations": 8 })
}

/// Polls `f` every 20 ms until it returns `Some`, for at most [`DEADLINE`].
pub(crate) fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory for one test's sockets and logs, removed when dropped. Declare it before the
/// processes that use it, so it outlives them.
pub(crate) struct TestDir(PathBuf);

impl TestDir {
    /// `$TMPDIR/vfmig-t<pid>-<tag>`, emptied. Keep `tag` short: UNIX socket paths are
    /// limited to 107 bytes.
    pub(crate) fn new(tag: &str) -> TestDir {
        let path = std::env::temp_dir().join(format!("vfmig-t{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the test directory");
        TestDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on 127.0.0.1 (free when asked: the destination binds it right after).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// Sends `signal` (e.g. `KILL`, `STOP`) to a process by pid.
pub(crate) fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// What the guest did so far, from `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Guest {
    pub(crate) pages_written: u64,
    pub(crate) device_ops: u64,
    pub(crate) device_errors: u64,
}

/// A `vfmig vm run` process, killed when dropped.
pub(crate) struct VmProcess {
    name: String,
    child: Child,
    control: PathBuf,
    log: PathBuf,
}

impl VmProcess {
    fn spawn(dir: &TestDir, name: &str, args: &[&str]) -> VmProcess {
        VmProcess::spawn_with_devices(dir, name, VM_DEVICES, args)
    }

    /// A VM of [`VM_ARGS`] with `devices` (`--device` options) instead of the usual two.
    fn spawn_with_devices(dir: &TestDir, name: &str, devices: &[&str], args: &[&str]) -> VmProcess {
        let control = dir.path().join(format!("{name}.sock"));
        let log = dir.path().join(format!("{name}.log"));
        let out = File::create(&log).expect("create the VM log");
        let err = out.try_clone().expect("clone the VM log");
        let child = Command::new(env!("CARGO_BIN_EXE_vfmig"))
            .args(["vm", "run", "--control"])
            .arg(&control)
            .args(VM_ARGS)
            .args(devices)
            .args(args)
            .env("TMPDIR", dir.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start vfmig vm run");
        VmProcess {
            name: name.to_string(),
            child,
            control,
            log,
        }
    }

    /// A fresh VM whose guest runs `guest` (workload arguments), once it runs.
    pub(crate) fn source(dir: &TestDir, name: &str, guest: &[&str]) -> VmProcess {
        let vm = VmProcess::spawn(dir, name, guest);
        vm.wait_until("its guest runs", |s| s["state"] == "running");
        vm
    }

    /// [`VmProcess::source`] with `devices` (`--device` options) instead of the usual two.
    pub(crate) fn source_with_devices(
        dir: &TestDir,
        name: &str,
        devices: &[&str],
        guest: &[&str],
    ) -> VmProcess {
        let vm = VmProcess::spawn_with_devices(dir, name, devices, guest);
        vm.wait_until("its guest runs", |s| s["state"] == "running");
        vm
    }

    /// A VM waiting for an incoming migration on 127.0.0.1:`port`, its guest to stay paused
    /// until `cont`; returned once it listens.
    pub(crate) fn destination(dir: &TestDir, name: &str, port: u16, guest: &[&str]) -> VmProcess {
        VmProcess::destination_with_devices(dir, name, port, VM_DEVICES, guest)
    }

    /// [`VmProcess::destination`] with `devices` (`--device` options) instead of the usual
    /// two.
    pub(crate) fn destination_with_devices(
        dir: &TestDir,
        name: &str,
        port: u16,
        devices: &[&str],
        guest: &[&str],
    ) -> VmProcess {
        let incoming = format!("tcp:127.0.0.1:{port}");
        let mut args = vec!["--incoming", &incoming, "--paused"];
        args.extend_from_slice(guest);
        let vm = VmProcess::spawn_with_devices(dir, name, devices, &args);
        vm.wait_until("it listens for the migration", |s| {
            s["incoming"] == "waiting"
        });
        vm
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process (and its device processes) logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The control socket's path.
    pub(crate) fn control(&self) -> &Path {
        &self.control
    }

    /// Sends a control command as the wire has it: `{"execute": command, "arguments":
    /// arguments}` (`null` arguments for a command without any).
    pub(crate) fn request(&self, command: &str, arguments: Value) -> Result<Value, RequestError> {
        request(
            &self.control,
            &json!({ "execute": command, "arguments": arguments }),
        )
    }

    /// Sends a control command that must succeed.
    pub(crate) fn call(&self, command: &str, arguments: Value) -> Value {
        self.request(command, arguments)
            .unwrap_or_else(|e| panic!("{}: {command}: {e}", self.name))
    }

    pub(crate) fn status(&self) -> Value {
        self.call("status", Value::Null)
    }

    pub(crate) fn guest(&self) -> Guest {
        let status = self.status();
        let g = &status["guest"];
        let n = |k: &str| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{}: no guest.{k} in {status}", self.name))
        };
        Guest {
            pages_written: n("pages_written"),
            device_ops: n("device_ops"),
            device_errors: n("device_errors"),
        }
    }

    /// The pid of the device process `id`, from `status`.
    pub(crate) fn device_pid(&self, id: &str) -> u32 {
        let status = self.status();
        status["devices"]
            .as_array()
            .and_then(|ds| ds.iter().find(|d| d["id"] == id))
            .and_then(|d| d["pid"].as_u64())
            .and_then(|pid| u32::try_from(pid).ok())
            .unwrap_or_else(|| panic!("{}: no device {id} with a pid in {status}", self.name))
    }

    /// Polls `status` until `ok` holds. The control socket may not be up yet at first.
    pub(crate) fn wait_until(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        poll(&format!("{}: {what}", self.name), || {
            self.request("status", Value::Null).ok().filter(|s| ok(s))
        })
    }

    /// The migration's status (`stats`).
    pub(crate) fn migration(&self) -> Value {
        self.call("stats", Value::Null)
    }

    /// Polls the migration until pre-copy has run `iterations` iterations and still goes
    /// on; panics if it ended instead.
    pub(crate) fn wait_for_pre_copy(&self, iterations: u64) -> Value {
        poll(
            &format!("{}: pre-copy iteration {iterations}", self.name),
            || {
                let m = self.migration();
                match m["state"].as_str() {
                    Some("active") if m["iteration"].as_u64() >= Some(iterations) => Some(m),
                    Some("setup" | "active" | "none") => None,
                    _ => panic!(
                        "{}: the migration ended before the test intervened: {m}",
                        self.name
                    ),
                }
            },
        )
    }

    /// Polls the migration until it completes, fails or is cancelled; returns its status.
    pub(crate) fn wait_for_migration_end(&self) -> Value {
        poll(&format!("{}: the migration to end", self.name), || {
            let m = self.migration();
            matches!(
                m["state"].as_str(),
                Some("completed" | "failed" | "cancelled" | "unconfirmed")
            )
            .then_some(m)
        })
    }

    /// Polls until the guest has written `pages` more pages and done `ops` more device
    /// operations than `since`; returns the counters then.
    pub(crate) fn wait_for_guest_progress(&self, since: Guest, pages: u64, ops: u64) -> Guest {
        poll(
            &format!("{}: the guest to make progress since {since:?}", self.name),
            || {
                let g = self.guest();
                (g.pages_written >= since.pages_written + pages
                    && g.device_ops >= since.device_ops + ops)
                    .then_some(g)
            },
        )
    }

    /// Asserts that the guest runs on here with working devices: it keeps writing RAM, its
    /// device operations keep succeeding (a device left stopped refuses BAR accesses), and
    /// no device operation failed, before or since.
    pub(crate) fn assert_guest_runs_cleanly(&self) {
        let status = self.status();
        assert_eq!(status["state"], "running", "{}: {status}", self.name);
        let before = self.guest();
        poll(
            &format!("{}: the guest to run on since {before:?}", self.name),
            || {
                let g = self.guest();
                assert_eq!(
                    g.device_errors, 0,
                    "{}: device operations failed: {g:?}",
                    self.name
                );
                (g.pages_written >= before.pages_written + 1000
                    && g.device_ops >= before.device_ops + 50)
                    .then_some(())
            },
        );
    }

    /// Polls until the process exits; returns how.
    pub(crate) fn wait_for_exit(&mut self) -> ExitStatus {
        let name = self.name.clone();
        poll(&format!("{name} to exit"), || {
            self.child.try_wait().expect("wait for the VM process")
        })
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log());
        }
    }
}

/// A `vfmig device` process started by the test, not by a VMM (as a user starts a device
/// server of their own), killed when dropped.
pub(crate) struct DeviceServer {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl DeviceServer {
    /// `vfmig device <kind> --socket <dir>/<name>.sock <args>`, returned once it listens.
    pub(crate) fn start(dir: &TestDir, name: &str, kind: &str, args: &[&str]) -> DeviceServer {
        let socket = dir.path().join(format!("{name}.sock"));
        let log = dir.path().join(format!("{name}.log"));
        let out = File::create(&log).expect("create the device log");
        let err = out.try_clone().expect("clone the device log");
        let child = Command::new(env!("CARGO_BIN_EXE_vfmig"))
            .args(["device", kind, "--socket"])
            .arg(&socket)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start vfmig device");
        let server = DeviceServer { child, socket, log };
        poll(&format!("{name} to listen"), || {
            std::os::unix::net::UnixStream::connect(&server.socket)
                .ok()
                .map(drop)
        });
        server
    }

    /// `socket=PATH,id=ID`, the `--device` option that attaches it as `id`.
    pub(crate) fn device_option(&self, id: &str) -> String {
        format!("socket={},id={id}", self.socket.display())
    }
}

impl Drop for DeviceServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("----- {} log -----\n{log}", self.socket.display());
        }
    }
}
