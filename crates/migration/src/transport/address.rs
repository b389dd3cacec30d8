//! Addresses of the transports: `tcp:HOST:PORT` (IPv6 hosts in brackets) and `unix:PATH`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The longest UNIX socket path (`sizeof(sun_path)` less the terminating NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// Where a migration stream goes or comes from.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Address {
    /// A TCP endpoint: a host name or IP address (IPv6 without brackets), and a port (0 to
    /// listen on any free port).
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A UNIX stream socket at a path.
    Unix(PathBuf),
}

/// Why an address string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Neither `tcp:` nor `unix:`.
    #[error("address {input:?} must start with tcp: or unix:")]
    Scheme {
        /// The string.
        input: String,
    },
    /// `tcp:` without `HOST:PORT`.
    #[error("address {input:?} must be tcp:HOST:PORT (IPv6 hosts in brackets)")]
    TcpForm {
        /// The string.
        input: String,
    },
    /// A port that is not a number from 0 to 65535.
    #[error("address {input:?} has an invalid port")]
    Port {
        /// The string.
        input: String,
    },
    /// `unix:` with an empty path, a NUL byte, or a path longer than [`MAX_UNIX_PATH`].
    #[error("address {input:?} must be unix:PATH with a path of 1 to {MAX_UNIX_PATH} bytes")]
    UnixPath {
        /// The string.
        input: String,
    },
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Address, AddressError> {
        if let Some(rest) = input.strip_prefix("tcp:") {
            let tcp_form = || AddressError::TcpForm {
                input: input.to_owned(),
            };
            let (host, port) = rest.rsplit_once(':').ok_or_else(tcp_form)?;
            let host = match host.strip_prefix('[') {
                Some(bracketed) => bracketed.strip_suffix(']').ok_or_else(tcp_form)?,
                None if host.contains(':') => return Err(tcp_form()),
                None => host,
            };
            if host.is_empty() || host.contains(['[', ']']) {
                return Err(tcp_form());
            }
            let port = port.parse().map_err(|_| AddressError::Port {
                input: input.to_owned(),
            })?;
            Ok(Address::Tcp {
                host: host.to_owned(),
                port,
            })
        } else if let Some(path) = input.strip_prefix("unix:") {
            if path.is_empty() || path.len() > MAX_UNIX_PATH || path.contains('\0') {
                return Err(AddressError::UnixPath {
                    input: input.to_owned(),
                });
            }
            Ok(Address::Unix(PathBuf::from(path)))
        } else {
            Err(AddressError::Scheme {
                input: input.to_owned(),
            })
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// An address travels as its string (`tcp:HOST:PORT`, `unix:PATH`), parsed on arrival.
impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Address, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> Result<Address, AddressError> {
        input.parse()
    }

    #[test]
    fn addresses_parse_and_print_back() {
        for input in [
            "tcp:127.0.0.1:4444",
            "tcp:localhost:0",
            "tcp:[::1]:80",
            "unix:/tmp/vfmig.sock",
            "unix:relative/sock",
        ] {
            assert_eq!(parse(input).unwrap().to_string(), input);
        }
        assert_eq!(
            parse("tcp:[::1]:80").unwrap(),
            Address::Tcp {
                host: "::1".into(),
                port: 80
            }
        );
    }

    #[test]
    fn bad_addresses_are_refused_with_the_reason() {
        assert!(matches!(parse("udp:x:1"), Err(AddressError::Scheme { .. })));
        assert!(matches!(
            parse("tcp:4444"),
            Err(AddressError::TcpForm { .. })
        ));
        assert!(matches!(
            parse("tcp::4444"),
            Err(AddressError::TcpForm { .. })
        ));
        assert!(matches!(
            parse("tcp:::1:80"),
            Err(AddressError::TcpForm { .. })
        ));
        assert!(matches!(
            parse("tcp:[::1:80"),
            Err(AddressError::TcpForm { .. })
        ));
        assert!(matches!(
            parse("tcp:h:65536"),
            Err(AddressError::Port { .. })
        ));
        assert!(matches!(parse("tcp:h:"), Err(AddressError::Port { .. })));
        assert!(matches!(parse("unix:"), Err(AddressError::UnixPath { .. })));
        let long = format!("unix:/{}", "x".repeat(MAX_UNIX_PATH));
        assert!(matches!(parse(&long), Err(AddressError::UnixPath { .. })));
    }
}
