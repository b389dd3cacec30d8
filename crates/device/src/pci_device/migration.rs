//! The migration data of a PCI device: the model's chunks, then its configuration space (and
//! MSI-X table).
//!
//! Each chunk in the data section starts with a one-byte tag: [`TAG_MODEL`] for a chunk the
//! model produced, [`TAG_CONFIG`] for the configuration space, sent once, last, at
//! stop-and-copy (the config after the data: QEMU's lesson). The destination hands each chunk
//! to its owner.
//!
//! ```text
//! TAG_CONFIG chunk: tag | 256 bytes of config space | MSI-X table (16 bytes per vector),
//!                   the table only for a device with MSI-X
//! ```
//!
//! A resume takes a config chunk of exactly that length for this device (a device with MSI-X
//! refuses one without the table, and one without refuses a table), EINVAL otherwise.

use vfmig_abi::StateKind;

use crate::migratable::{Migratable, MigratableError};
use crate::pci::{ConfigSpace, MsixTable};

/// Tag of a chunk the model produced.
pub(crate) const TAG_MODEL: u8 = 1;
/// Tag of the configuration-space chunk.
pub(crate) const TAG_CONFIG: u8 = 2;
/// Bytes of the configuration space in its chunk.
const CONFIG_LEN: usize = 256;
const _: () = assert!(CONFIG_LEN as u64 == ConfigSpace::size());

/// The model and the configuration space seen as one [`Migratable`].
pub(crate) struct PciMigration<'a> {
    pub(crate) model: &'a mut dyn Migratable,
    pub(crate) config: &'a mut ConfigSpace,
    /// The MSI-X table, sent after the configuration space.
    pub(crate) msix: Option<&'a mut MsixTable>,
    /// The configuration space is still to be sent in this stop-and-copy.
    pub(crate) config_pending: &'a mut bool,
}

impl PciMigration<'_> {
    /// Bytes of the config chunk: tag, configuration space, MSI-X table.
    fn config_chunk_len(&self) -> usize {
        1 + CONFIG_LEN + self.msix.as_ref().map_or(0, |t| t.encoded_len())
    }
}

impl Migratable for PciMigration<'_> {
    fn set_state(&mut self, from: StateKind, to: StateKind) -> Result<(), MigratableError> {
        self.model.set_state(from, to)?;
        *self.config_pending = to == StateKind::StopCopy;
        Ok(())
    }

    fn pending_bytes(&mut self) -> Result<u64, MigratableError> {
        let config = if *self.config_pending {
            self.config_chunk_len() as u64
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
        let len = self.config_chunk_len() - 1;
        let dst = body
            .get_mut(..len)
            .ok_or_else(|| MigratableError::new(libc::ENOSPC, "no room for the config space"))?;
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(self.config.bytes());
        if let Some(table) = &self.msix {
            table.encode(&mut bytes);
        }
        dst.copy_from_slice(&bytes);
        *tag = TAG_CONFIG;
        *self.config_pending = false;
        Ok(len + 1)
    }

    fn load_chunk(&mut self, chunk: &[u8]) -> Result<(), MigratableError> {
        match chunk.split_first() {
            Some((&TAG_MODEL, body)) => self.model.load_chunk(body),
            Some((&TAG_CONFIG, body)) => {
                let expected = self.config_chunk_len() - 1;
                let (saved, table) = body
                    .split_first_chunk::<CONFIG_LEN>()
                    .filter(|_| body.len() == expected)
                    .ok_or_else(|| {
                        MigratableError::bad_chunk(format!(
                            "config chunk of {} bytes, not {expected}",
                            body.len()
                        ))
                    })?;
                if let Some(msix) = self.msix.as_deref_mut()
                    && !msix.restore(table)
                {
                    return Err(MigratableError::bad_chunk("MSI-X table of the wrong size"));
                }
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
