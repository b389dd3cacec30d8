//! The control socket: JSON lines on a UNIX socket, in the spirit of QMP.
//!
//! ```text
//! -> {"execute": "status"}
//! <- {"return": {"state": "running", ...}}
//! -> {"execute": "migrate", "arguments": {"to": "tcp:127.0.0.1:4444", "downtime_ms": 300}}
//! <- {"return": {}}
//! -> {"execute": "nope"}
//! <- {"error": {"class": "CommandNotFound", "desc": "no command nope"}}
//! ```
//!
//! The VMM provides the protocol; what each command does is a [`ControlHandler`] the program
//! installs (the migration engine lives above this crate). Lines are capped at
//! [`MAX_LINE`] bytes; a longer or malformed line gets an error and the connection goes on.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use serde_json::{Value, json};

/// Longest request line accepted.
pub const MAX_LINE: u64 = 64 << 10;

/// A failed command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {desc}")]
pub struct ControlError {
    /// `CommandNotFound`, `InvalidArgument` or `GenericError`.
    pub class: &'static str,
    /// What went wrong.
    pub desc: String,
}

impl ControlError {
    /// No such command.
    pub fn not_found(command: &str) -> Self {
        ControlError {
            class: "CommandNotFound",
            desc: format!("no command {command}"),
        }
    }

    /// Bad arguments.
    pub fn invalid(desc: impl Into<String>) -> Self {
        ControlError {
            class: "InvalidArgument",
            desc: desc.into(),
        }
    }

    /// Anything else.
    pub fn generic(desc: impl Into<String>) -> Self {
        ControlError {
            class: "GenericError",
            desc: desc.into(),
        }
    }
}

/// Executes control commands.
pub trait ControlHandler: Send + Sync + 'static {
    /// Runs `command` with `arguments` (`null` if none were given).
    fn execute(&self, command: &str, arguments: &Value) -> Result<Value, ControlError>;
}

#[derive(serde::Deserialize)]
struct Request {
    execute: String,
    #[serde(default)]
    arguments: Value,
}

fn respond(handler: &dyn ControlHandler, line: &str) -> Value {
    let result = serde_json::from_str::<Request>(line)
        .map_err(|e| ControlError::invalid(format!("not a request: {e}")))
        .and_then(|r| handler.execute(&r.execute, &r.arguments));
    match result {
        Ok(value) => json!({ "return": value }),
        Err(e) => json!({ "error": { "class": e.class, "desc": e.desc } }),
    }
}

fn serve_connection(stream: UnixStream, handler: &dyn ControlHandler) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        let n = (&mut reader)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let reply = if line.len() as u64 > MAX_LINE {
            // Skip the rest of the oversized line.
            let mut rest = Vec::new();
            reader.read_until(b'\n', &mut rest)?;
            json!({ "error": { "class": "InvalidArgument", "desc": "request line too long" } })
        } else {
            match std::str::from_utf8(&line) {
                Ok(text) => respond(handler, text.trim()),
                Err(_) => json!({ "error": { "class": "InvalidArgument", "desc": "not UTF-8" } }),
            }
        };
        writer.write_all(format!("{reply}\n").as_bytes())?;
    }
}

/// Serves the control socket on `listener`, one thread per connection, until the listener
/// fails.
pub fn serve(listener: UnixListener, handler: Arc<dyn ControlHandler>) -> JoinHandle<()> {
    thread::spawn(move || {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    let handler = handler.clone();
                    thread::spawn(move || {
                        if let Err(e) = serve_connection(stream, &*handler) {
                            tracing::debug!(error = %e, "control connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    return;
                }
            }
        }
    })
}

/// Why a control request failed on the client side.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The socket.
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    /// The reply was not JSON of the expected shape.
    #[error("control reply: {0}")]
    Reply(String),
    /// The command failed.
    #[error(transparent)]
    Command(ControlError),
}

/// Sends one command on the control socket at `path` and returns its result.
pub fn request(path: &Path, command: &str, arguments: Value) -> Result<Value, RequestError> {
    let mut stream = UnixStream::connect(path)?;
    let line = json!({ "execute": command, "arguments": arguments });
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream.take(16 << 20)).read_line(&mut reply)?;
    let mut reply: Value =
        serde_json::from_str(&reply).map_err(|e| RequestError::Reply(e.to_string()))?;
    if let Some(value) = reply.get_mut("return") {
        return Ok(value.take());
    }
    let err = reply
        .get("error")
        .ok_or_else(|| RequestError::Reply(reply.to_string()))?;
    let desc = err
        .get("desc")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let class = match err.get("class").and_then(Value::as_str) {
        Some("CommandNotFound") => "CommandNotFound",
        Some("InvalidArgument") => "InvalidArgument",
        _ => "GenericError",
    };
    Err(RequestError::Command(ControlError { class, desc }))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl ControlHandler for Echo {
        fn execute(&self, command: &str, arguments: &Value) -> Result<Value, ControlError> {
            match command {
                "echo" => Ok(arguments.clone()),
                other => Err(ControlError::not_found(other)),
            }
        }
    }

    /// A served control socket's path, removed when dropped.
    struct Socket(std::path::PathBuf);

    impl Drop for Socket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn socket() -> (Socket, JoinHandle<()>) {
        let path = std::env::temp_dir().join(format!(
            "vfmig-control-{}-{:?}.sock",
            std::process::id(),
            thread::current().id()
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        (Socket(path), serve(listener, Arc::new(Echo)))
    }

    #[test]
    fn a_command_returns_its_value() {
        let (socket, _t) = socket();
        let path = socket.0.as_path();
        assert_eq!(
            request(path, "echo", json!({"a": 1})).unwrap(),
            json!({"a": 1})
        );
    }

    #[test]
    fn an_unknown_command_is_command_not_found() {
        let (socket, _t) = socket();
        let path = socket.0.as_path();
        match request(path, "nope", Value::Null) {
            Err(RequestError::Command(e)) => assert_eq!(e.class, "CommandNotFound"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_malformed_line_gets_an_error_and_the_connection_goes_on() {
        let (socket, _t) = socket();
        let path = socket.0.as_path();
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(b"{not json\n{\"execute\":\"echo\",\"arguments\":2}\n")
            .unwrap();
        let mut r = BufReader::new(s);
        let (mut a, mut b) = (String::new(), String::new());
        r.read_line(&mut a).unwrap();
        r.read_line(&mut b).unwrap();
        assert!(a.contains("InvalidArgument"), "{a}");
        assert_eq!(b.trim(), r#"{"return":2}"#);
    }

    #[test]
    fn an_oversized_line_is_refused() {
        let (socket, _t) = socket();
        let path = socket.0.as_path();
        let mut s = UnixStream::connect(path).unwrap();
        let mut big = vec![b' '; 70_000];
        big.push(b'\n');
        s.write_all(&big).unwrap();
        s.write_all(b"{\"execute\":\"echo\",\"arguments\":3}\n")
            .unwrap();
        let mut r = BufReader::new(s);
        let (mut a, mut b) = (String::new(), String::new());
        r.read_line(&mut a).unwrap();
        r.read_line(&mut b).unwrap();
        assert!(a.contains("too long"), "{a}");
        assert_eq!(b.trim(), r#"{"return":3}"#);
    }
}
