//! Shared by the integration tests: a guest RAM in `Vec`s, a sample VM, a sample stream that
//! has every section type, and a reader loop that applies RAM and records the rest.
#![allow(dead_code, unreachable_pub, missing_docs)]
#![allow(clippy::cast_possible_truncation)]

use std::io::{self, Read, Write};

use vfmig_migration::stream::{
    DeviceChunk, DeviceConfig, DeviceDesc, End, Iteration, MachineState, Phase, RamLayout,
    ReadError, ReadGuestMemory, RegionDesc, Section, StreamConfig, StreamReader, StreamWriter,
    WriteError, WriteGuestMemory,
};
use vfmig_migration::{DeviceIndex, Gpa, PageRun, STREAM_PAGE_SIZE};

/// Guest RAM: one `Vec` per region.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GuestRam {
    pub regions: Vec<(u64, Vec<u8>)>,
}

impl GuestRam {
    /// Zeroed RAM for `layout`.
    pub fn new(layout: &RamLayout) -> GuestRam {
        GuestRam {
            regions: layout
                .regions()
                .iter()
                .map(|region| (region.gpa.raw(), vec![0; region.size as usize]))
                .collect(),
        }
    }

    /// RAM filled with `byte`.
    pub fn filled(layout: &RamLayout, byte: u8) -> GuestRam {
        let mut ram = GuestRam::new(layout);
        for (_, bytes) in &mut ram.regions {
            bytes.fill(byte);
        }
        ram
    }

    /// The bytes at `[gpa, gpa + len)`, if inside one region.
    pub fn slice(&self, gpa: u64, len: usize) -> Option<&[u8]> {
        self.regions.iter().find_map(|(base, bytes)| {
            let offset = usize::try_from(gpa.checked_sub(*base)?).ok()?;
            bytes.get(offset..offset.checked_add(len)?)
        })
    }

    pub fn slice_mut(&mut self, gpa: u64, len: usize) -> Option<&mut [u8]> {
        self.regions.iter_mut().find_map(|(base, bytes)| {
            let offset = usize::try_from(gpa.checked_sub(*base)?).ok()?;
            bytes.get_mut(offset..offset.checked_add(len)?)
        })
    }

    /// The page at `gpa`.
    pub fn page(&self, gpa: u64) -> &[u8] {
        self.slice(gpa, STREAM_PAGE_SIZE.bytes_usize())
            .expect("page inside RAM")
    }

    /// Fills the page at `gpa` with a pattern that depends on `gpa` and `seed`; never zero.
    pub fn write_pattern(&mut self, gpa: u64, seed: u64) {
        let page = self
            .slice_mut(gpa, STREAM_PAGE_SIZE.bytes_usize())
            .expect("page inside RAM");
        let mut x = gpa ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for word in page.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&(x | 1).to_le_bytes());
        }
    }
}

fn out_of_range(gpa: Gpa, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{gpa} + {len:#x} is not guest RAM"),
    )
}

impl ReadGuestMemory for GuestRam {
    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> io::Result<()> {
        let src = self
            .slice(gpa.raw(), buf.len())
            .ok_or_else(|| out_of_range(gpa, buf.len()))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl WriteGuestMemory for GuestRam {
    fn write(&mut self, gpa: Gpa, data: &[u8]) -> io::Result<()> {
        let dst = self
            .slice_mut(gpa.raw(), data.len())
            .ok_or_else(|| out_of_range(gpa, data.len()))?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

/// Two regions: 1 MiB at 0 and 256 KiB at 4 GiB.
pub fn sample_layout() -> RamLayout {
    RamLayout::new(vec![
        RegionDesc {
            gpa: Gpa(0),
            size: 1 << 20,
        },
        RegionDesc {
            gpa: Gpa(1 << 32),
            size: 256 << 10,
        },
    ])
    .expect("valid layout")
}

/// The sample layout with devices 1 (`mtty`) and 2 (`dma-engine`).
pub fn sample_config() -> StreamConfig {
    let devices = vec![
        DeviceDesc {
            id: DeviceIndex(1),
            kind: "mtty".into(),
            config: br#"{"ports":2}"#.to_vec(),
        },
        DeviceDesc {
            id: DeviceIndex(2),
            kind: "dma-engine".into(),
            config: vec![0, 1, 2, 3],
        },
    ];
    StreamConfig::new(sample_layout(), devices).expect("valid config")
}

/// Source RAM for the sample: every page patterned, except every fifth page of the first
/// region, which stays zero.
pub fn sample_ram() -> GuestRam {
    let layout = sample_layout();
    let mut ram = GuestRam::new(&layout);
    for region in layout.regions() {
        for page in 0..region.size / STREAM_PAGE_SIZE.bytes() {
            if region.gpa.raw() == 0 && page % 5 == 0 {
                continue;
            }
            ram.write_pattern(region.gpa.raw() + page * STREAM_PAGE_SIZE.bytes(), 7);
        }
    }
    ram
}

/// A device chunk's bytes: `len` bytes derived from `seed`.
pub fn chunk_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// A section as the tests compare it: owned, RAM summarised.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Owned {
    Config(StreamConfig),
    Ram { data_pages: u64, zero_pages: u64 },
    Chunk(DeviceIndex, Phase, u64, Vec<u8>),
    DeviceConfig(DeviceIndex, Vec<u8>),
    Machine(u32, Vec<u8>, Vec<u8>),
    Iteration(Iteration),
    End(End),
}

/// Writes the sample stream: every section type, RAM of both regions over two iterations,
/// chunks of both devices in both phases (one empty, one of 70,000 bytes).
pub fn write_sample<W: Write>(out: W, ram: &GuestRam) -> Result<StreamWriter<W>, WriteError> {
    let mut writer = StreamWriter::new(out)?;
    writer.write_config(&sample_config())?;
    writer.write_iteration(Iteration {
        number: 0,
        pages: 320,
    })?;
    writer.write_ram(
        [PageRun::new(Gpa(0), 256), PageRun::new(Gpa(1 << 32), 64)],
        ram,
    )?;
    writer.write_device_chunk(&DeviceChunk {
        device: DeviceIndex(1),
        phase: Phase::PreCopy,
        iteration: 0,
        data: &chunk_bytes(100, 1),
    })?;
    writer.write_iteration(Iteration {
        number: 1,
        pages: 3,
    })?;
    writer.write_ram(
        [
            PageRun::new(Gpa(0x1000), 2),
            PageRun::new(Gpa((1 << 32) + 0x3_f000), 1),
        ],
        ram,
    )?;
    writer.write_device_chunk(&DeviceChunk {
        device: DeviceIndex(2),
        phase: Phase::StopCopy,
        iteration: 1,
        data: &chunk_bytes(70_000, 2),
    })?;
    writer.write_device_chunk(&DeviceChunk {
        device: DeviceIndex(1),
        phase: Phase::StopCopy,
        iteration: 1,
        data: &[],
    })?;
    writer.write_machine(&MachineState {
        vcpus: 2,
        program: b"program",
        state: &chunk_bytes(9000, 4),
    })?;
    writer.write_device_config(&DeviceConfig {
        device: DeviceIndex(1),
        data: b"mtty-config",
    })?;
    writer.write_device_config(&DeviceConfig {
        device: DeviceIndex(2),
        data: &chunk_bytes(5000, 3),
    })?;
    writer.finish()?;
    Ok(writer)
}

/// The sample stream as bytes.
pub fn sample_stream() -> Vec<u8> {
    let writer = write_sample(Vec::new(), &sample_ram()).expect("sample writes");
    writer.into_inner().expect("flush to a Vec")
}

/// What reading the sample stream gives, RAM summarised as the encoder cuts it.
pub fn sample_sections() -> Vec<Owned> {
    vec![
        Owned::Config(sample_config()),
        Owned::Iteration(Iteration {
            number: 0,
            pages: 320,
        }),
        // 256 pages at 0, every fifth zero (52 of them), and 64 at 4 GiB: one section of
        // 256 data pages (the default section size), then the other 12.
        Owned::Ram {
            data_pages: 256,
            zero_pages: 52,
        },
        Owned::Ram {
            data_pages: 12,
            zero_pages: 0,
        },
        Owned::Chunk(DeviceIndex(1), Phase::PreCopy, 0, chunk_bytes(100, 1)),
        Owned::Iteration(Iteration {
            number: 1,
            pages: 3,
        }),
        Owned::Ram {
            data_pages: 3,
            zero_pages: 0,
        },
        Owned::Chunk(DeviceIndex(2), Phase::StopCopy, 1, chunk_bytes(70_000, 2)),
        Owned::Chunk(DeviceIndex(1), Phase::StopCopy, 1, vec![]),
        Owned::Machine(2, b"program".to_vec(), chunk_bytes(9000, 4)),
        Owned::DeviceConfig(DeviceIndex(1), b"mtty-config".to_vec()),
        Owned::DeviceConfig(DeviceIndex(2), chunk_bytes(5000, 3)),
    ]
}

/// Reads a whole stream, applying RAM to `ram`, up to and including `End` (which is the
/// last element on success).
pub fn read_all<R: Read>(input: R, ram: &mut GuestRam) -> Result<Vec<Owned>, ReadError> {
    let mut reader = StreamReader::new(input)?;
    let mut sections = Vec::new();
    loop {
        let owned = match reader.next_section()? {
            Section::Config(config) => Owned::Config(config.clone()),
            Section::RamPages(pages) => {
                pages.apply(ram).expect("apply inside RAM");
                Owned::Ram {
                    data_pages: pages.data_pages(),
                    zero_pages: pages.zero_pages(),
                }
            }
            Section::DeviceChunk(chunk) => Owned::Chunk(
                chunk.device,
                chunk.phase,
                chunk.iteration,
                chunk.data.to_vec(),
            ),
            Section::DeviceConfig(config) => {
                Owned::DeviceConfig(config.device, config.data.to_vec())
            }
            Section::Machine(m) => Owned::Machine(m.vcpus, m.program.to_vec(), m.state.to_vec()),
            Section::Iteration(iteration) => Owned::Iteration(iteration),
            Section::End(end) => {
                sections.push(Owned::End(end));
                return Ok(sections);
            }
        };
        sections.push(owned);
    }
}

/// `read_all` without the `End` element, after checking it is there.
pub fn read_body<R: Read>(input: R, ram: &mut GuestRam) -> Result<Vec<Owned>, ReadError> {
    let mut sections = read_all(input, ram)?;
    assert!(matches!(sections.pop(), Some(Owned::End(_))));
    Ok(sections)
}
