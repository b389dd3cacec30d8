//! The client's reply deadline, over real sockets with a scripted server: a server that never
//! answers makes the call fail with ETIMEDOUT within the deadline (VERSION included), the
//! connection is broken after it (later calls fail at once, naming the timeout), a late reply
//! is never taken, and a caller's own deadline overrides the configured one.

mod common;

use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::scripted;
use vfmig_vfio_user::{Client, ClientConfig, ClientError, Connection, Errno};

const DEADLINE: Duration = Duration::from_millis(300);
/// Slack for a loaded machine: the call must fail before the deadline plus this.
const SLACK: Duration = Duration::from_secs(3);

fn config() -> ClientConfig {
    ClientConfig {
        reply_timeout: DEADLINE,
        ..ClientConfig::default()
    }
}

/// A script that reads requests and never answers, until the client goes; reports each
/// request it read.
fn silent(read: mpsc::Sender<u16>) -> impl FnOnce(&mut Connection) + Send + 'static {
    move |conn| {
        while let Ok(received) = conn.recv() {
            let _ = read.send(received.header.msg_id);
        }
    }
}

fn assert_timed_out(err: &ClientError, after: Duration, took: Duration) {
    assert_eq!(err.errno(), Errno::ETIMEDOUT, "{err}");
    assert!(
        matches!(err, ClientError::TimedOut { after: a, .. } if *a == after),
        "{err:?}"
    );
    assert!(took >= after, "failed after {took:?}, before its deadline");
    assert!(took < after + SLACK, "failed only after {took:?}");
}

#[test]
fn a_request_never_answered_fails_with_etimedout_within_the_deadline() {
    let (tx, rx) = mpsc::channel();
    let (client, server) = scripted(config(), silent(tx));
    let start = Instant::now();
    let err = client.device_info().unwrap_err();
    assert_timed_out(&err, DEADLINE, start.elapsed());
    assert!(rx.recv().is_ok(), "the request was never sent");
    drop(client);
    server.join().unwrap();
}

#[test]
fn after_a_timeout_the_connection_is_broken_and_later_calls_fail_at_once() {
    let (tx, rx) = mpsc::channel();
    let (client, server) = scripted(config(), silent(tx));
    assert!(client.reset().is_err());
    // The server sees the connection go: its read ends.
    server.join().unwrap();
    assert_eq!(rx.try_iter().count(), 1);
    let start = Instant::now();
    let err = client.device_info().unwrap_err();
    assert!(
        matches!(err, ClientError::Disconnected { errno, .. } if errno == Errno::ETIMEDOUT),
        "{err:?}"
    );
    assert!(
        start.elapsed() < DEADLINE,
        "a broken connection was waited on"
    );
}

#[test]
fn a_late_reply_is_never_taken_for_a_later_request() {
    let (late, go) = mpsc::channel::<()>();
    let (client, server) = scripted(config(), move |conn| {
        let first = conn.recv().unwrap();
        // Answered only after the client gave up on it.
        go.recv().unwrap();
        let info = vfmig_vfio_user::message::DeviceInfo {
            argsz: 16,
            flags: 0,
            num_regions: 9,
            num_irqs: 5,
        };
        let _ = conn.send_reply(
            &first.header,
            &vfmig_vfio_user::message::Reply::DeviceGetInfo(info),
            &[],
        );
    });
    let err = client.device_info().unwrap_err();
    assert_eq!(err.errno(), Errno::ETIMEDOUT);
    late.send(()).unwrap();
    server.join().unwrap();
    let err = client.device_info().unwrap_err();
    assert!(
        matches!(err, ClientError::Disconnected { .. }),
        "a late reply was taken: {err:?}"
    );
}

#[test]
fn a_callers_own_deadline_overrides_the_configured_one() {
    let (tx, _rx) = mpsc::channel();
    let (client, server) = scripted(
        ClientConfig {
            reply_timeout: Duration::from_secs(60),
            ..ClientConfig::default()
        },
        silent(tx),
    );
    let start = Instant::now();
    let err = client
        .region_read_within(0, 0, &mut [0u8; 4], DEADLINE)
        .unwrap_err();
    assert_timed_out(&err, DEADLINE, start.elapsed());
    drop(client);
    server.join().unwrap();
}

#[test]
fn a_server_that_never_answers_version_fails_the_connect_with_etimedout() {
    let (client_end, server_end) = UnixStream::pair().unwrap();
    let server = thread::spawn(move || {
        let mut conn = Connection::new(server_end).unwrap();
        let _version = conn.recv().unwrap();
        // Holds the socket open, silent, until the client hangs up.
        let _ = conn.recv();
    });
    let start = Instant::now();
    let err = Client::from_stream(client_end, config()).unwrap_err();
    assert_timed_out(&err, DEADLINE, start.elapsed());
    server.join().unwrap();
}
