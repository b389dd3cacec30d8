//! The order of sections in a stream, checked the same way by the writer (before it sends a
//! section) and the reader (before it returns one):
//!
//! 1. `Config` comes first, once.
//! 2. A device section names a device of the config; after a device's `DeviceConfig` nothing
//!    more of that device comes.
//! 3. `Machine` comes at most once, before any `DeviceConfig` (a device's configuration
//!    routes its interrupts into the machine).
//! 4. `End` comes last, once every device of the config has sent its `DeviceConfig`.
//!
//! RAM pages, device chunks of different devices and iteration markers interleave freely in
//! between.

use std::collections::HashSet;

use crate::stream::config::StreamConfig;
use crate::stream::error::OrderError;
use crate::stream::kind::SectionKind;
use crate::types::DeviceIndex;

/// A section, as far as the order rules care.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    Config,
    RamPages,
    DeviceChunk(DeviceIndex),
    DeviceConfig(DeviceIndex),
    Iteration,
    End,
    Machine,
}

impl Step {
    fn kind(self) -> SectionKind {
        match self {
            Step::Config => SectionKind::Config,
            Step::RamPages => SectionKind::RamPages,
            Step::DeviceChunk(_) => SectionKind::DeviceChunk,
            Step::DeviceConfig(_) => SectionKind::DeviceConfig,
            Step::Iteration => SectionKind::Iteration,
            Step::End => SectionKind::End,
            Step::Machine => SectionKind::Machine,
        }
    }
}

/// Where a stream is in the rules.
#[derive(Debug, Default)]
pub(crate) struct Order {
    config: Option<StreamConfig>,
    configured_devices: HashSet<DeviceIndex>,
    machine: bool,
    ended: bool,
}

impl Order {
    /// The config, once its section was accepted.
    pub(crate) fn config(&self) -> Option<&StreamConfig> {
        self.config.as_ref()
    }

    /// Whether `End` was accepted.
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    /// Checks that `step` may come now, without accepting it.
    pub(crate) fn check(&self, step: Step) -> Result<(), OrderError> {
        if self.ended {
            return Err(OrderError::AfterEnd);
        }
        let Some(config) = &self.config else {
            return match step {
                Step::Config => Ok(()),
                _ => Err(OrderError::ConfigNotFirst { kind: step.kind() }),
            };
        };
        match step {
            Step::Config => Err(OrderError::DuplicateConfig),
            Step::RamPages | Step::Iteration => Ok(()),
            Step::Machine if self.machine => Err(OrderError::DuplicateMachine),
            Step::Machine => match self.configured_devices.iter().min() {
                Some(&device) => Err(OrderError::MachineAfterDeviceConfig { device }),
                None => Ok(()),
            },
            Step::DeviceChunk(device) | Step::DeviceConfig(device) => {
                if config.device(device).is_none() {
                    Err(OrderError::UnknownDevice { device })
                } else if self.configured_devices.contains(&device) {
                    Err(OrderError::AfterDeviceConfig {
                        kind: step.kind(),
                        device,
                    })
                } else {
                    Ok(())
                }
            }
            Step::End => match config
                .devices()
                .iter()
                .find(|device| !self.configured_devices.contains(&device.id))
            {
                Some(device) => Err(OrderError::MissingDeviceConfig { device: device.id }),
                None => Ok(()),
            },
        }
    }

    /// Checks and accepts a step other than `Config`.
    pub(crate) fn accept(&mut self, step: Step) -> Result<(), OrderError> {
        self.check(step)?;
        match step {
            Step::DeviceConfig(device) => {
                self.configured_devices.insert(device);
            }
            Step::End => self.ended = true,
            Step::Machine => self.machine = true,
            Step::Config | Step::RamPages | Step::DeviceChunk(_) | Step::Iteration => {}
        }
        Ok(())
    }

    /// Checks and accepts the `Config` step.
    pub(crate) fn accept_config(
        &mut self,
        config: StreamConfig,
    ) -> Result<&StreamConfig, OrderError> {
        self.check(Step::Config)?;
        Ok(self.config.insert(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::config::{DeviceDesc, RamLayout};

    fn order_with_devices(ids: &[u32]) -> Order {
        let devices = ids
            .iter()
            .map(|&id| DeviceDesc {
                id: DeviceIndex(id),
                kind: "mtty".into(),
                config: vec![],
            })
            .collect();
        let mut order = Order::default();
        order
            .accept_config(StreamConfig::new(RamLayout::default(), devices).unwrap())
            .unwrap();
        order
    }

    #[test]
    fn config_must_come_first_and_once() {
        let mut order = Order::default();
        assert_eq!(
            order.accept(Step::RamPages),
            Err(OrderError::ConfigNotFirst {
                kind: SectionKind::RamPages
            })
        );
        let mut order = order_with_devices(&[]);
        assert_eq!(order.check(Step::Config), Err(OrderError::DuplicateConfig));
        assert_eq!(order.accept(Step::RamPages), Ok(()));
    }

    #[test]
    fn device_sections_follow_their_rules() {
        let mut order = order_with_devices(&[1, 2]);
        let one = DeviceIndex(1);
        assert_eq!(order.accept(Step::DeviceChunk(one)), Ok(()));
        assert_eq!(
            order.accept(Step::DeviceChunk(DeviceIndex(9))),
            Err(OrderError::UnknownDevice {
                device: DeviceIndex(9)
            })
        );
        assert_eq!(order.accept(Step::DeviceConfig(one)), Ok(()));
        assert!(matches!(
            order.accept(Step::DeviceChunk(one)),
            Err(OrderError::AfterDeviceConfig { .. })
        ));
        assert_eq!(
            order.accept(Step::End),
            Err(OrderError::MissingDeviceConfig {
                device: DeviceIndex(2)
            })
        );
        assert_eq!(order.accept(Step::DeviceConfig(DeviceIndex(2))), Ok(()));
        assert_eq!(order.accept(Step::End), Ok(()));
        assert_eq!(order.accept(Step::Iteration), Err(OrderError::AfterEnd));
    }
}
