//! The migration data of a PCI device: the model's chunks, then its configuration space.
//!
//! Each chunk in the data section starts with a one-byte tag: [`TAG_MODEL`] for a chunk the
//! model produced, [`TAG_CONFIG`] for the configuration space, sent once, last, at
//! stop-and-copy (the config after the data: QEMU's lesson). The destination hands each chunk
//! to its owner.

use vfmig_abi::StateKind;

use crate::migratable::{Migratable, MigratableError};
use crate::pci::ConfigSpace;

/// Tag of a chunk the model produced.
pub(crate) const TAG_MODEL: u8 = 1;
/// Tag of the configuration-space chunk.
pub(crate) const TAG_CONFIG: u8 = 2;
/// Length of the configuration-space chunk: the tag and 256 bytes.
const CONFIG_CHUNK: u64 = 1 + ConfigSpace::size();

/// The model and the configuration space seen as one [`Migratable`].
pub(crate) struct PciMigration<'a> {
    pub(crate) model: &'a mut dyn Migratable,
    pub(crate) config: &'a mut ConfigSpace,
    /// The configuration space is still to be sent in this stop-and-copy.
    pub(crate) config_pending: &'a mut bool,
}

impl Migratable for PciMigration<'_> {
    fn set_state(&mut self, from: StateKind, to: StateKind) -> Result<(), MigratableError> {
        self.model.set_state(from, to)?;
        *self.config_pending = to == StateKind::StopCopy;
        Ok(())
    }

    fn pending_bytes(&mut self) -> Result<u64, MigratableError> {
        let config = if *self.config_pending {
            CONFIG_CHUNK
        } else {
            0
        };
        Ok(self.model.pending_bytes()?.saturating_add(config))
    }

    fn save_chunk(&mut self, buf: &mut [u8]) -> Result<usize, MigratableError> {
        let Some((tag, body)) = buf.split_first_mut() else {
            return Err(MigratableError::new(libc::ENOSPC, "no room for a chunk"));
        };
        if self.model.pending_bytes()? > 0 {
            let n = self.model.save_chunk(body)?;
            if n > 0 {
                *tag = TAG_MODEL;
                return Ok(n + 1);
            }
        }
        if !*self.config_pending {
            return Ok(0);
        }
        let config = self.config.bytes();
        let dst = body
            .get_mut(..config.len())
            .ok_or_else(|| MigratableError::new(libc::ENOSPC, "no room for the config space"))?;
        dst.copy_from_slice(config);
        *tag = TAG_CONFIG;
        *self.config_pending = false;
        Ok(config.len() + 1)
    }

    fn load_chunk(&mut self, chunk: &[u8]) -> Result<(), MigratableError> {
        match chunk.split_first() {
            Some((&TAG_MODEL, body)) => self.model.load_chunk(body),
            Some((&TAG_CONFIG, body)) => {
                let saved: &[u8; 256] = body
                    .try_into()
                    .map_err(|_| MigratableError::bad_chunk("config chunk is not 256 bytes"))?;
                self.config.restore(saved);
                Ok(())
            }
            Some((tag, _)) => Err(MigratableError::bad_chunk(format!(
                "unknown chunk tag {tag}"
            ))),
            None => Err(MigratableError::bad_chunk("empty chunk")),
        }
    }
}
