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
//! This module is the framing only: lines, the `return` / `error` envelope of a reply
//! ([`Response`]), the error classes ([`ErrorClass`]), a server ([`serve`]) and a client
//! ([`request`]). The commands themselves are a type the program defines (a serde enum
//! tagged by `execute`, its arguments under `arguments`) and a [`ControlHandler`] that
//! executes them: the commands of `vfmig vm run` take the migration engine's parameters,
//! and the engine lives above this crate. Requests and replies are typed on both sides; no
//! handler sees raw JSON. Lines are capped at [`MAX_LINE`] bytes; a longer or malformed line
//! gets an error and the connection goes on.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Longest request line accepted.
pub const MAX_LINE: u64 = 64 << 10;

/// Longest reply line a client reads.
pub const MAX_REPLY: u64 = 16 << 20;

/// The class of a failed command, as QMP names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorClass {
    /// No such command.
    CommandNotFound,
    /// Not a request, or bad arguments.
    InvalidArgument,
    /// Anything else.
    GenericError,
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::InvalidArgument => "InvalidArgument",
            ErrorClass::GenericError => "GenericError",
        })
    }
}

/// A failed command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{class}: {desc}")]
pub struct ControlError {
    /// What kind of failure.
    pub class: ErrorClass,
    /// What went wrong.
    pub desc: String,
}

impl ControlError {
    /// No such command.
    pub fn not_found(command: &str) -> Self {
        ControlError {
            class: ErrorClass::CommandNotFound,
            desc: format!("no command {command}"),
        }
    }

    /// Bad arguments.
    pub fn invalid(desc: impl Into<String>) -> Self {
        ControlError {
            class: ErrorClass::InvalidArgument,
            desc: desc.into(),
        }
    }

    /// Anything else.
    pub fn generic(desc: impl Into<String>) -> Self {
        ControlError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }
}

/// A reply line: `{"return": R}` or `{"error": {"class": ..., "desc": ...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response<R> {
    /// The command's result.
    Return(R),
    /// Why it failed.
    Error(ControlError),
}

/// Executes control commands.
pub trait ControlHandler: Send + Sync + 'static {
    /// A request line, parsed whole: typically an enum tagged by `execute`, its arguments
    /// under `arguments`.
    type Command: DeserializeOwned;
    /// What a command returns.
    type Reply: Serialize;
    /// The `execute` names of [`Self::Command`]: a request that names none of them is
    /// `CommandNotFound`, one that names one but does not parse is `InvalidArgument`.
    const COMMANDS: &'static [&'static str];

    /// Runs `command`.
    fn execute(&self, command: Self::Command) -> Result<Self::Reply, ControlError>;
}

/// Just the name of a request, to tell an unknown command from bad arguments.
#[derive(Deserialize)]
struct Named {
    execute: String,
}

/// The command of a request line.
fn parse<H: ControlHandler + ?Sized>(line: &str) -> Result<H::Command, ControlError> {
    serde_json::from_str(line).map_err(|e| match serde_json::from_str::<Named>(line) {
        Ok(Named { execute }) if !H::COMMANDS.contains(&execute.as_str()) => {
            ControlError::not_found(&execute)
        }
        _ => ControlError::invalid(format!("not a request: {e}")),
    })
}

/// The reply line to a request line.
fn respond<H: ControlHandler + ?Sized>(handler: &H, line: &str) -> String {
    let response = match parse::<H>(line).and_then(|command| handler.execute(command)) {
        Ok(reply) => Response::Return(reply),
        Err(e) => Response::Error(e),
    };
    serde_json::to_string(&response).unwrap_or_else(|e| {
        serde_json::to_string(&Response::<()>::Error(ControlError::generic(format!(
            "the reply does not serialize: {e}"
        ))))
        .unwrap_or_default()
    })
}

/// A reply to a line that is not a request at all.
fn refuse(desc: &str) -> String {
    serde_json::to_string(&Response::<()>::Error(ControlError::invalid(desc))).unwrap_or_default()
}

fn serve_connection<H: ControlHandler + ?Sized>(stream: UnixStream, handler: &H) -> io::Result<()> {
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
            refuse("request line too long")
        } else {
            match std::str::from_utf8(&line) {
                Ok(text) => respond(handler, text.trim()),
                Err(_) => refuse("not UTF-8"),
            }
        };
        writer.write_all(format!("{reply}\n").as_bytes())?;
    }
}

/// Serves the control socket on `listener`, one thread per connection, until the listener
/// fails.
pub fn serve<H: ControlHandler>(listener: UnixListener, handler: Arc<H>) -> JoinHandle<()> {
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
    /// The request did not serialize, or the reply was not JSON of the expected shape.
    #[error("control reply: {0}")]
    Reply(#[from] serde_json::Error),
    /// The command failed.
    #[error(transparent)]
    Command(ControlError),
}

/// Sends `command` on the control socket at `path` and returns its result, typed as the
/// caller expects it.
pub fn request<C: Serialize, R: DeserializeOwned>(
    path: &Path,
    command: &C,
) -> Result<R, RequestError> {
    let mut stream = UnixStream::connect(path)?;
    let mut line = serde_json::to_vec(command)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(stream.take(MAX_REPLY)).read_line(&mut reply)?;
    match serde_json::from_str::<Response<R>>(&reply)? {
        Response::Return(value) => Ok(value),
        Response::Error(e) => Err(RequestError::Command(e)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// The commands of the test server.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "execute", content = "arguments", rename_all = "lowercase")]
    enum TestCommand {
        /// Returns its arguments.
        Echo(Value),
        /// Returns the number plus one.
        Increment(u64),
        /// Returns `"pong"`.
        Ping,
    }

    struct Echo;
    impl ControlHandler for Echo {
        type Command = TestCommand;
        type Reply = Value;
        const COMMANDS: &'static [&'static str] = &["echo", "increment", "ping"];

        fn execute(&self, command: TestCommand) -> Result<Value, ControlError> {
            Ok(match command {
                TestCommand::Echo(v) => v,
                TestCommand::Increment(n) => json!(n + 1),
                TestCommand::Ping => json!("pong"),
            })
        }
    }

    fn call(path: &Path, request: &Value) -> Result<Value, RequestError> {
        super::request(path, request)
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
        let reply: Value = request(path, &TestCommand::Echo(json!({"a": 1}))).unwrap();
        assert_eq!(reply, json!({"a": 1}));
    }

    #[test]
    fn an_unknown_command_is_command_not_found() {
        let (socket, _t) = socket();
        let path = socket.0.as_path();
        match call(path, &json!({"execute": "nope"})) {
            Err(RequestError::Command(e)) => assert_eq!(e.class, ErrorClass::CommandNotFound),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_arguments_of_a_known_command_are_invalid_argument() {
        let (socket, _t) = socket();
        let path = socket.0.as_path();
        match call(path, &json!({"execute": "increment", "arguments": "one"})) {
            Err(RequestError::Command(e)) => assert_eq!(e.class, ErrorClass::InvalidArgument),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_command_without_arguments_may_carry_null_arguments() {
        let (socket, _t) = socket();
        let path = socket.0.as_path();
        let reply = call(path, &json!({"execute": "ping", "arguments": null})).unwrap();
        assert_eq!(reply, json!("pong"));
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
