//! `--device` of `vfmig vm run`: `mtty`, `dma-engine` (a device process the VMM starts) or
//! `socket=PATH` (a vfio-user server already listening there, started by anyone), each with
//! an optional `,id=NAME` and an optional `,dma=messages` (guest RAM mapped to it without
//! fds: it reaches guest memory only through DMA_READ / DMA_WRITE messages; `dma=shared`,
//! the default, maps it with them). Parsed by clap into a [`DeviceArg`], then turned into the
//! VMM's `DeviceSpec`s with their ids ([`device_specs`]).

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::bail;
use vfmig_vmm::{DeviceSpec, DeviceTimeouts, DmaPath};

/// One `--device`, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DeviceArg {
    /// Where the device comes from.
    pub(crate) what: DeviceWhat,
    /// `id=NAME`, if given.
    pub(crate) id: Option<String>,
    /// `dma=shared|messages` (default `shared`).
    pub(crate) dma: DmaPath,
}

/// What a `--device` attaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DeviceWhat {
    /// An mtty process the VMM starts.
    Mtty,
    /// A dma-engine process the VMM starts.
    DmaEngine,
    /// A server already listening on this socket.
    Socket(PathBuf),
}

impl DeviceWhat {
    /// The stem of a default id: `mtty`, `dmaengine`, `socket` (then `0`, `1`, ...).
    fn stem(&self) -> &'static str {
        match self {
            DeviceWhat::Mtty => "mtty",
            DeviceWhat::DmaEngine => "dmaengine",
            DeviceWhat::Socket(_) => "socket",
        }
    }
}

/// The longest id: a device's socket, `<dir>/<id>.sock`, must stay within a UNIX path.
const MAX_ID: usize = 32;

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let what = match parts.next().unwrap_or_default() {
            "mtty" => DeviceWhat::Mtty,
            "dma-engine" => DeviceWhat::DmaEngine,
            other => match other.strip_prefix("socket=") {
                Some("") => return Err("socket= needs a path".into()),
                Some(path) => DeviceWhat::Socket(PathBuf::from(path)),
                None => {
                    return Err(format!(
                        "{other:?}: expected mtty, dma-engine or socket=PATH"
                    ));
                }
            },
        };
        let (mut id, mut dma) = (None, None);
        for part in parts {
            if let Some(path) = part.strip_prefix("dma=") {
                if dma.is_some() {
                    return Err("dma= given twice".into());
                }
                dma = Some(match path {
                    "shared" => DmaPath::Shared,
                    "messages" => DmaPath::Messages,
                    other => return Err(format!("dma={other}: expected shared or messages")),
                });
                continue;
            }
            match part.strip_prefix("id=") {
                Some(_) if id.is_some() => return Err("id= given twice".into()),
                Some(name) if valid_id(name) => id = Some(name.to_string()),
                Some(name) => {
                    return Err(format!(
                        "id {name:?}: 1 to {MAX_ID} letters, digits, '-' or '_'"
                    ));
                }
                None => return Err(format!("{part:?}: expected id=NAME or dma=...")),
            }
        }
        Ok(DeviceArg {
            what,
            id,
            dma: dma.unwrap_or_default(),
        })
    }
}

/// The VMM's specs of `devices`: ids as given, or the stem of the device's kind and its
/// number among the devices of that kind (`mtty0`, `dmaengine0`, `socket0`, `socket1`, ...);
/// the dma-engines started with `dma_ram_mib` of device RAM, `all_mapped` if asked; every
/// device with the reply deadlines `timeouts`. Two devices of one id are refused.
pub(crate) fn device_specs(
    devices: &[DeviceArg],
    dma_ram_mib: u64,
    all_mapped: bool,
    timeouts: DeviceTimeouts,
) -> anyhow::Result<Vec<DeviceSpec>> {
    if !dma_ram_mib.is_power_of_two() || dma_ram_mib > 1024 {
        bail!("--dma-ram-mib must be a power of two up to 1024");
    }
    let mut specs: Vec<DeviceSpec> = Vec::with_capacity(devices.len());
    for (i, d) in devices.iter().enumerate() {
        let id = d.id.clone().unwrap_or_else(|| {
            let n = devices[..i]
                .iter()
                .filter(|e| e.what.stem() == d.what.stem())
                .count();
            format!("{}{n}", d.what.stem())
        });
        if specs.iter().any(|s| s.id == id) {
            bail!("two devices with the id {id}");
        }
        let spec = match &d.what {
            DeviceWhat::Mtty => DeviceSpec::spawn(id, "mtty", vec![]),
            DeviceWhat::DmaEngine => {
                let mut args = vec!["--ram-mib".to_string(), dma_ram_mib.to_string()];
                if all_mapped {
                    args.push("--all-mapped".into());
                }
                DeviceSpec::spawn(id, "dma-engine", args)
            }
            DeviceWhat::Socket(path) => DeviceSpec::socket(id, path),
        };
        specs.push(spec.with_dma(d.dma).with_timeouts(timeouts));
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use vfmig_vmm::DeviceSource;

    use super::*;

    fn specs(args: &[&str]) -> anyhow::Result<Vec<DeviceSpec>> {
        let parsed: Vec<DeviceArg> = args.iter().map(|a| a.parse().unwrap()).collect();
        device_specs(&parsed, 4, false, DeviceTimeouts::DEFAULT)
    }

    fn ids(args: &[&str]) -> Vec<String> {
        specs(args).unwrap().into_iter().map(|s| s.id).collect()
    }

    #[test]
    fn a_socket_device_attaches_the_path_given() {
        let d: DeviceArg = "socket=/run/nvme.sock".parse().unwrap();
        assert_eq!(d.what, DeviceWhat::Socket("/run/nvme.sock".into()));
        assert_eq!(d.id, None);
    }

    #[test]
    fn an_id_is_taken_from_id_equals() {
        let d: DeviceArg = "socket=/s,id=nvme0".parse().unwrap();
        assert_eq!(d.id.as_deref(), Some("nvme0"));
        let d: DeviceArg = "mtty,id=console".parse().unwrap();
        assert_eq!(
            (d.what, d.id.as_deref()),
            (DeviceWhat::Mtty, Some("console"))
        );
    }

    #[test]
    fn ids_default_to_the_kind_and_its_number() {
        assert_eq!(
            ids(&["mtty", "dma-engine", "socket=/a", "socket=/b", "mtty"]),
            ["mtty0", "dmaengine0", "socket0", "socket1", "mtty1"]
        );
    }

    #[test]
    fn spawned_devices_start_the_kind_with_its_options() {
        let s = specs(&["dma-engine"]).unwrap();
        assert_eq!(
            s[0].source,
            DeviceSource::Spawn {
                kind: "dma-engine".into(),
                args: vec!["--ram-mib".into(), "4".into()],
            }
        );
    }

    #[test]
    fn dma_messages_maps_guest_ram_without_fds() {
        let s = specs(&[
            "dma-engine,dma=messages",
            "socket=/s,dma=messages,id=x",
            "mtty",
        ])
        .unwrap();
        let dma: Vec<DmaPath> = s.iter().map(|s| s.dma).collect();
        assert_eq!(dma, [DmaPath::Messages, DmaPath::Messages, DmaPath::Shared]);
        assert_eq!(s[1].id, "x");
    }

    #[test]
    fn two_devices_of_one_id_are_refused() {
        let e = specs(&["mtty", "socket=/s,id=mtty0"]).unwrap_err();
        assert!(e.to_string().contains("mtty0"), "{e}");
    }

    #[test]
    fn malformed_device_options_are_refused() {
        for bad in [
            "gpu",
            "socket=",
            "mtty,id=",
            "mtty,id=a/b",
            "mtty,ram=4",
            "mtty,id=a,id=b",
            "dma-engine,dma=fd",
            "dma-engine,dma=messages,dma=shared",
        ] {
            assert!(bad.parse::<DeviceArg>().is_err(), "{bad} was accepted");
        }
    }
}
