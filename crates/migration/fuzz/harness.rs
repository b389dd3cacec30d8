//! The fuzz harness, shared by the cargo-fuzz targets (nightly) and by the corpus replay and
//! property tests (stable), so all run the same checks on the same inputs.
//!
//! * [`read_stream`]: the input is a stream as received.
//! * [`read_framed`]: the input is a sequence of frames whose checksums (and the stream
//!   header) the harness fixes up, so that the fuzzer reaches the payload decoders and the
//!   order rules instead of stopping at the first checksum.
//!
//! Checked: reading never panics; every RAM write lands inside the config's layout; and a
//! stream that reads to `End` (current version, nothing skipped) re-encodes through
//! `StreamWriter` to exactly its own bytes.

use std::io;

use vfmig_migration::Gpa;
use vfmig_migration::stream::{
    CURRENT_VERSION, RamLayout, Section, StreamHeader, StreamReader, StreamWriter, WriteGuestMemory,
};

/// Guest memory that stores nothing and checks every write against the layout.
struct CheckedSink<'a> {
    layout: &'a RamLayout,
}

impl WriteGuestMemory for CheckedSink<'_> {
    fn write(&mut self, gpa: Gpa, data: &[u8]) -> io::Result<()> {
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        assert!(
            self.layout.region_of(gpa, len).is_some(),
            "write of {len:#x} bytes at {gpa} outside RAM"
        );
        Ok(())
    }

    fn write_zeroes(&mut self, gpa: Gpa, len: u64) -> io::Result<()> {
        assert!(
            self.layout.region_of(gpa, len).is_some(),
            "zeroing {len:#x} bytes at {gpa} outside RAM"
        );
        Ok(())
    }
}

/// Reads `data` as a stream. Returns whether it read to `End`.
pub(crate) fn read_stream(data: &[u8]) -> bool {
    let Ok(mut reader) = StreamReader::new(data) else {
        return false;
    };
    let canonical = reader.version() == CURRENT_VERSION;
    let Ok(mut writer) = StreamWriter::new(Vec::new()) else {
        return false;
    };
    loop {
        let section = match reader.next_section() {
            Ok(section) => section,
            Err(_) => return false,
        };
        if let Section::RamPages(pages) = &section {
            let layout = writer.config().map(|config| config.ram().clone());
            let layout = layout.expect("RAM pages before the config were returned");
            pages
                .apply(&mut CheckedSink { layout: &layout })
                .expect("the sink does not fail");
        }
        writer
            .write_section(&section)
            .expect("a section the reader accepted is refused by the writer");
        if let Section::End(_) = section {
            break;
        }
    }
    if canonical && reader.sections_skipped() == 0 {
        let again = writer.into_inner().expect("writing to a Vec");
        let consumed = usize::try_from(reader.bytes_read()).unwrap_or(usize::MAX);
        assert_eq!(
            Some(again.as_slice()),
            data.get(..consumed),
            "re-encoding changed the stream"
        );
    }
    true
}

/// Turns any bytes into a stream with a valid header and valid frame checksums: each frame
/// is an 8-byte header (its length cut to the bytes that follow) and its payload, and the
/// checksum is computed. Returns the stream.
pub(crate) fn frame_up(data: &[u8]) -> Vec<u8> {
    let mut stream = StreamHeader::new(CURRENT_VERSION).to_bytes().to_vec();
    let mut rest = data;
    while let Some((header, after)) = rest.split_first_chunk::<8>() {
        let [k0, k1, f0, f1, l0, l1, l2, l3] = *header;
        let declared = u32::from_le_bytes([l0, l1, l2, l3]);
        let len = usize::try_from(declared)
            .unwrap_or(usize::MAX)
            .min(after.len());
        let (payload, next) = after.split_at(len);
        stream.extend(vfmig_migration::stream::encode_frame(
            u16::from_le_bytes([k0, k1]),
            u16::from_le_bytes([f0, f1]),
            payload,
        ));
        rest = next;
    }
    stream
}

/// Reads `data` after [`frame_up`]. Returns whether it read to `End`.
pub(crate) fn read_framed(data: &[u8]) -> bool {
    read_stream(&frame_up(data))
}
