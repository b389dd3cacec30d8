//! `mtty`: a two-port 16550-style serial device, like Linux's samples/vfio-mdev/mtty.
//!
//! Each port is an 8-byte I/O BAR (port 0 is BAR0, port 1 is BAR1) with the 16550 registers.
//! As in the Linux sample, a byte written to THR goes into the port's own 16-byte receive FIFO
//! (the line is looped back), where RBR reads it; a full FIFO sets the overrun bit. The receive
//! interrupt fires when the FIFO reaches its trigger level and IER enables it; the transmit
//! interrupt fires when THR empties. Registers and FIFO contents migrate.
//!
//! ```text
//! off  DLAB=0 read / write      DLAB=1
//!  0   RBR / THR                DLL
//!  1   IER                      DLM
//!  2   IIR / FCR
//!  3   LCR (bit 7: DLAB)
//!  4   MCR
//!  5   LSR (DR, OE, THRE, TEMT)
//!  6   MSR
//!  7   SCR
//! ```

use std::collections::VecDeque;

use vfmig_abi::StateKind;

use crate::migratable::{Migratable, MigratableError};
use crate::model::{Bar, DeviceContext, DeviceError, DeviceModel};
use crate::pci::{BarKind, PciIdentity};

const PORTS: usize = 2;
const FIFO: usize = 16;

const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const IIR_NONE: u8 = 0x01;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
const IIR_FIFO: u8 = 0xc0;
const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;
const LCR_DLAB: u8 = 0x80;
const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;

/// One serial port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Port {
    ier: u8,
    fcr: u8,
    lcr: u8,
    mcr: u8,
    msr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    overrun: bool,
    thr_empty_pending: bool,
    fifo: VecDeque<u8>,
}

/// Saved size of a port: ten register/flag bytes, the FIFO length, 16 FIFO bytes.
const PORT_STATE: usize = 11 + FIFO;
const MAGIC: &[u8; 4] = b"MTTY";
const VERSION: u16 = 1;
/// Saved size of the device.
const STATE_LEN: usize = 4 + 2 + PORTS * PORT_STATE;

impl Port {
    fn trigger_level(&self) -> usize {
        if self.fcr & FCR_ENABLE == 0 {
            return 1;
        }
        [1, 4, 8, 14][usize::from(self.fcr >> 6)]
    }

    /// The interrupt identification: receive data first, then THR empty.
    fn iir(&self) -> u8 {
        let fifo = if self.fcr & FCR_ENABLE != 0 {
            IIR_FIFO
        } else {
            0
        };
        if self.ier & IER_RDI != 0 && self.fifo.len() >= self.trigger_level() {
            fifo | IIR_RDI
        } else if self.ier & IER_THRI != 0 && self.thr_empty_pending {
            fifo | IIR_THRI
        } else {
            fifo | IIR_NONE
        }
    }

    fn interrupting(&self) -> bool {
        self.iir() & IIR_NONE == 0
    }

    fn read(&mut self, reg: u64) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match (reg, dlab) {
            (0, false) => self.fifo.pop_front().unwrap_or(0),
            (0, true) => self.dll,
            (1, false) => self.ier,
            (1, true) => self.dlm,
            (2, _) => {
                let iir = self.iir();
                if iir & 0x0f == IIR_THRI {
                    self.thr_empty_pending = false;
                }
                iir
            }
            (3, _) => self.lcr,
            (4, _) => self.mcr,
            (5, _) => {
                let mut lsr = LSR_THRE | LSR_TEMT;
                if !self.fifo.is_empty() {
                    lsr |= LSR_DR;
                }
                if std::mem::take(&mut self.overrun) {
                    lsr |= LSR_OE;
                }
                lsr
            }
            (6, _) => self.msr,
            _ => self.scr,
        }
    }

    fn write(&mut self, reg: u64, v: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match (reg, dlab) {
            (0, false) => {
                if self.fifo.len() < FIFO {
                    self.fifo.push_back(v);
                } else {
                    self.overrun = true;
                }
                self.thr_empty_pending = true;
            }
            (0, true) => self.dll = v,
            (1, false) => {
                // Enabling THRI with THR empty raises it at once, as on a real 16550.
                if v & IER_THRI != 0 && self.ier & IER_THRI == 0 {
                    self.thr_empty_pending = true;
                }
                self.ier = v & 0x0f;
            }
            (1, true) => self.dlm = v,
            (2, _) => {
                if v & FCR_CLEAR_RX != 0 {
                    self.fifo.clear();
                }
                self.fcr = v & 0xc1;
            }
            (3, _) => self.lcr = v,
            (4, _) => self.mcr = v & 0x1f,
            (5, _) | (6, _) => {}
            _ => self.scr = v,
        }
    }

    fn save(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.ier, self.fcr, self.lcr, self.mcr, self.msr, self.scr]);
        out.extend_from_slice(&[self.dll, self.dlm, u8::from(self.overrun)]);
        out.push(u8::from(self.thr_empty_pending));
        out.push(u8::try_from(self.fifo.len()).unwrap_or(u8::MAX)); // at most 16
        let mut fifo = [0u8; FIFO];
        for (slot, &b) in fifo.iter_mut().zip(&self.fifo) {
            *slot = b;
        }
        out.extend_from_slice(&fifo);
    }

    fn load(b: &[u8; PORT_STATE]) -> Result<Port, MigratableError> {
        let len = usize::from(b[10]);
        if len > FIFO || b[8] > 1 || b[9] > 1 {
            return Err(MigratableError::bad_chunk("mtty port state out of range"));
        }
        Ok(Port {
            ier: b[0],
            fcr: b[1],
            lcr: b[2],
            mcr: b[3],
            msr: b[4],
            scr: b[5],
            dll: b[6],
            dlm: b[7],
            overrun: b[8] == 1,
            thr_empty_pending: b[9] == 1,
            fifo: b[11..11 + len].iter().copied().collect(),
        })
    }
}

/// The mtty device.
#[derive(Debug, Default)]
pub struct Mtty {
    ports: [Port; PORTS],
    /// Stop-and-copy: the state chunk still has to be sent.
    unsent: bool,
}

impl Mtty {
    /// A device with both ports at their power-on values.
    pub fn new() -> Self {
        Mtty::default()
    }

    fn port(&mut self, bar: usize) -> Result<&mut Port, DeviceError> {
        self.ports
            .get_mut(bar)
            .ok_or_else(|| DeviceError::invalid(format!("mtty has no BAR{bar}")))
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STATE_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        for p in &self.ports {
            p.save(&mut out);
        }
        out
    }
}

fn single_byte(offset: u64, len: usize) -> Result<u64, DeviceError> {
    if len != 1 || offset >= 8 {
        return Err(DeviceError::invalid(format!(
            "mtty registers take 1-byte accesses in 0..8, not {len} at {offset}"
        )));
    }
    Ok(offset)
}

/// Its PCI identity: what a guest driver (and the VMM's synthetic guest) finds it by.
pub const IDENTITY: PciIdentity = PciIdentity {
    vendor: 0x4348,
    device: 0x3253,
    class: 0x07_00_02,
    revision: 1,
};

impl DeviceModel for Mtty {
    fn identity(&self) -> PciIdentity {
        IDENTITY
    }

    fn bars(&self) -> Vec<Bar> {
        (0..PORTS)
            .map(|index| Bar {
                index,
                kind: BarKind::Io,
                size: 8,
                mmap: None,
            })
            .collect()
    }

    fn bar_read(
        &mut self,
        bar: usize,
        offset: u64,
        buf: &mut [u8],
        _ctx: &mut DeviceContext<'_>,
    ) -> Result<(), DeviceError> {
        let reg = single_byte(offset, buf.len())?;
        let v = self.port(bar)?.read(reg);
        buf.fill(v);
        Ok(())
    }

    fn bar_write(
        &mut self,
        bar: usize,
        offset: u64,
        data: &[u8],
        ctx: &mut DeviceContext<'_>,
    ) -> Result<(), DeviceError> {
        let reg = single_byte(offset, data.len())?;
        let port = self.port(bar)?;
        let before = port.interrupting();
        port.write(reg, data.first().copied().unwrap_or(0));
        if port.interrupting() && (!before || reg == 0) {
            ctx.interrupt();
        }
        Ok(())
    }

    fn reset(&mut self) {
        *self = Mtty::default();
    }

    fn migratable(&mut self) -> Option<&mut dyn Migratable> {
        Some(self)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.encode()
    }
}

impl Migratable for Mtty {
    fn set_state(&mut self, _from: StateKind, to: StateKind) -> Result<(), MigratableError> {
        // The state is a few dozen bytes: nothing is sent in pre-copy, all of it at stop.
        self.unsent = to == StateKind::StopCopy;
        Ok(())
    }

    fn pending_bytes(&mut self) -> Result<u64, MigratableError> {
        Ok(if self.unsent { STATE_LEN as u64 } else { 0 })
    }

    fn save_chunk(&mut self, buf: &mut [u8]) -> Result<usize, MigratableError> {
        if !self.unsent {
            return Ok(0);
        }
        let state = self.encode();
        let dst = buf.get_mut(..state.len()).ok_or_else(|| {
            MigratableError::new(libc::ENOSPC, "data section smaller than the mtty state")
        })?;
        dst.copy_from_slice(&state);
        self.unsent = false;
        Ok(state.len())
    }

    fn load_chunk(&mut self, chunk: &[u8]) -> Result<(), MigratableError> {
        if chunk.len() != STATE_LEN || &chunk[..4] != MAGIC {
            return Err(MigratableError::bad_chunk("not an mtty state chunk"));
        }
        let version = u16::from_le_bytes([chunk[4], chunk[5]]);
        if version != VERSION {
            return Err(MigratableError::bad_chunk(format!(
                "mtty state version {version}, expected {VERSION}"
            )));
        }
        let mut ports: [Port; PORTS] = Default::default();
        for (i, port) in ports.iter_mut().enumerate() {
            let at = 6 + i * PORT_STATE;
            let raw: &[u8; PORT_STATE] = chunk[at..at + PORT_STATE]
                .try_into()
                .map_err(|_| MigratableError::bad_chunk("short mtty port state"))?;
            *port = Port::load(raw)?;
        }
        self.ports = ports;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{Irqs, MsixControl};

    fn io(m: &mut Mtty, irqs: &mut Irqs, port: usize, reg: u64, v: Option<u8>) -> u8 {
        let mut ctx = DeviceContext {
            irqs,
            intx_disabled: false,
            msix: MsixControl::Disabled,
        };
        match v {
            Some(v) => {
                m.bar_write(port, reg, &[v], &mut ctx).unwrap();
                0
            }
            None => {
                let mut b = [0u8];
                m.bar_read(port, reg, &mut b, &mut ctx).unwrap();
                b[0]
            }
        }
    }

    #[test]
    fn written_bytes_loop_back_to_rbr() {
        let (mut m, mut irqs) = (Mtty::new(), Irqs::new());
        for b in b"hi" {
            io(&mut m, &mut irqs, 0, 0, Some(*b));
        }
        assert_eq!(io(&mut m, &mut irqs, 0, 5, None) & LSR_DR, LSR_DR);
        assert_eq!(
            [
                io(&mut m, &mut irqs, 0, 0, None),
                io(&mut m, &mut irqs, 0, 0, None)
            ],
            *b"hi"
        );
        assert_eq!(io(&mut m, &mut irqs, 0, 5, None) & LSR_DR, 0);
    }

    #[test]
    fn ports_are_independent() {
        let (mut m, mut irqs) = (Mtty::new(), Irqs::new());
        io(&mut m, &mut irqs, 1, 0, Some(b'x'));
        assert_eq!(io(&mut m, &mut irqs, 0, 5, None) & LSR_DR, 0);
        assert_eq!(io(&mut m, &mut irqs, 1, 0, None), b'x');
    }

    #[test]
    fn a_full_fifo_sets_overrun_once() {
        let (mut m, mut irqs) = (Mtty::new(), Irqs::new());
        for i in 0..17 {
            io(&mut m, &mut irqs, 0, 0, Some(i));
        }
        assert_eq!(io(&mut m, &mut irqs, 0, 5, None) & LSR_OE, LSR_OE);
        assert_eq!(io(&mut m, &mut irqs, 0, 5, None) & LSR_OE, 0);
    }

    #[test]
    fn receive_interrupt_is_identified_at_the_trigger_level() {
        let (mut m, mut irqs) = (Mtty::new(), Irqs::new());
        io(&mut m, &mut irqs, 0, 2, Some(FCR_ENABLE | 0x40)); // trigger level 4
        io(&mut m, &mut irqs, 0, 1, Some(IER_RDI));
        for i in 0..3 {
            io(&mut m, &mut irqs, 0, 0, Some(i));
        }
        assert_eq!(io(&mut m, &mut irqs, 0, 2, None) & 0x0f, IIR_NONE);
        io(&mut m, &mut irqs, 0, 0, Some(3));
        assert_eq!(io(&mut m, &mut irqs, 0, 2, None) & 0x0f, IIR_RDI);
    }

    #[test]
    fn divisor_latch_is_behind_dlab() {
        let (mut m, mut irqs) = (Mtty::new(), Irqs::new());
        io(&mut m, &mut irqs, 0, 3, Some(LCR_DLAB));
        io(&mut m, &mut irqs, 0, 0, Some(0x0c));
        io(&mut m, &mut irqs, 0, 3, Some(0x03));
        assert_eq!(
            io(&mut m, &mut irqs, 0, 5, None) & LSR_DR,
            0,
            "DLL write is not data"
        );
        io(&mut m, &mut irqs, 0, 3, Some(LCR_DLAB));
        assert_eq!(io(&mut m, &mut irqs, 0, 0, None), 0x0c);
    }

    #[test]
    fn wide_accesses_are_einval() {
        let (mut m, mut irqs) = (Mtty::new(), Irqs::new());
        let mut ctx = DeviceContext {
            irqs: &mut irqs,
            intx_disabled: false,
            msix: MsixControl::Disabled,
        };
        assert_eq!(
            m.bar_read(0, 0, &mut [0u8; 2], &mut ctx).unwrap_err().errno,
            libc::EINVAL
        );
    }

    #[test]
    fn a_chunk_with_a_fifo_longer_than_16_is_refused() {
        let mut m = Mtty::new();
        let mut state = m.encode();
        state[6 + 10] = 17;
        assert!(m.load_chunk(&state).is_err());
    }
}
