//! RAM pages: zero pages elided, sections bounded, runs outside RAM refused on both sides,
//! and apply writes exactly the sent bytes (and zeroes).
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::io;

use common::{GuestRam, sample_layout, sample_ram};
use vfmig_migration::stream::{
    CURRENT_VERSION, MAX_DATA_PAGES, MAX_RUNS, PayloadError, RUN_ZERO, RamEncoder, RamLayout,
    RamPages, RamSectionError, ReadError, RegionDesc, Section, StreamConfig, StreamHeader,
    StreamReader, StreamWriter, WriteError, encode_frame,
};
use vfmig_migration::{Gpa, PageRun, STREAM_PAGE_SIZE};

fn config_for(layout: &RamLayout) -> StreamConfig {
    StreamConfig::new(layout.clone(), vec![]).unwrap()
}

/// Writes a stream of `layout` with one `write_ram(runs)`, returning the stream and stats.
fn stream_with_ram(
    layout: &RamLayout,
    ram: &GuestRam,
    runs: &[PageRun],
) -> (Vec<u8>, vfmig_migration::stream::RamStats) {
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.write_config(&config_for(layout)).unwrap();
    let stats = writer.write_ram(runs.iter().copied(), ram).unwrap();
    writer.finish().unwrap();
    (writer.into_inner().unwrap(), stats)
}

/// Reads a stream into `dest`, returning the entries count of each RAM section.
fn apply_stream(stream: &[u8], dest: &mut GuestRam) -> Vec<usize> {
    let mut reader = StreamReader::new(stream).unwrap();
    let mut tables = Vec::new();
    loop {
        match reader.next_section().unwrap() {
            Section::RamPages(pages) => {
                tables.push(pages.entries().len());
                pages.apply(dest).unwrap();
            }
            Section::End(_) => return tables,
            _ => {}
        }
    }
}

fn single_region(bytes: u64) -> RamLayout {
    RamLayout::new(vec![RegionDesc {
        gpa: Gpa(0x10_0000),
        size: bytes,
    }])
    .unwrap()
}

#[test]
fn zero_pages_are_elided_from_the_stream() {
    let layout = single_region(1 << 20);
    let mut ram = GuestRam::new(&layout);
    ram.write_pattern(0x10_0000 + 100 * STREAM_PAGE_SIZE.bytes(), 1);
    let run = [PageRun::new(Gpa(0x10_0000), 256)];
    let (sparse, stats) = stream_with_ram(&layout, &ram, &run);
    assert_eq!(
        (stats.pages, stats.zero_pages, stats.sections),
        (256, 255, 1)
    );
    // One data page, two zero runs around it: a page and a three-entry table.
    assert_eq!(stats.bytes, 12 + 8 + 3 * 16 + STREAM_PAGE_SIZE.bytes());

    let full = GuestRam::filled(&layout, 0x5a);
    let (dense, dense_stats) = stream_with_ram(&layout, &full, &run);
    assert_eq!(dense_stats.zero_pages, 0);
    // 255 more pages of data, two fewer table entries.
    assert_eq!(
        dense.len() - sparse.len(),
        255 * STREAM_PAGE_SIZE.bytes_usize() - 2 * 16
    );
}

#[test]
fn apply_writes_the_sent_bytes_and_zeroes_zero_runs() {
    let layout = sample_layout();
    let source = sample_ram();
    // Pages 10..40 of region 0 (zero every fifth) and all of region 1 but its first page.
    let runs = [
        PageRun::new(Gpa(10 * STREAM_PAGE_SIZE.bytes()), 30),
        PageRun::new(Gpa((1 << 32) + STREAM_PAGE_SIZE.bytes()), 63),
    ];
    let (stream, stats) = stream_with_ram(&layout, &source, &runs);
    assert_eq!((stats.pages, stats.zero_pages), (93, 6));

    let mut dest = GuestRam::filled(&layout, 0xee);
    apply_stream(&stream, &mut dest);
    assert_only_runs_copied(&layout, &runs, &source, &dest);
}

/// Asserts that `dest` (filled with 0xee before) holds `source`'s pages in `runs` and 0xee
/// everywhere else.
fn assert_only_runs_copied(
    layout: &RamLayout,
    runs: &[PageRun],
    source: &GuestRam,
    dest: &GuestRam,
) {
    for region in layout.regions() {
        for page in 0..region.size / STREAM_PAGE_SIZE.bytes() {
            let gpa = region.gpa.raw() + page * STREAM_PAGE_SIZE.bytes();
            let sent = runs.iter().any(|run| {
                gpa >= run.gpa.raw() && gpa < run.gpa.raw() + run.pages * STREAM_PAGE_SIZE.bytes()
            });
            if sent {
                assert_eq!(dest.page(gpa), source.page(gpa), "page {gpa:#x}");
            } else {
                assert!(dest.page(gpa).iter().all(|&b| b == 0xee), "page {gpa:#x}");
            }
        }
    }
}

#[test]
fn large_runs_are_cut_into_bounded_sections() {
    let layout = single_region(20 << 20);
    let source = GuestRam::filled(&layout, 0x33);
    let pages = (20 << 20) / STREAM_PAGE_SIZE.bytes();
    let run = [PageRun::new(Gpa(0x10_0000), pages)];
    // 1 MiB sections by default.
    let (stream, stats) = stream_with_ram(&layout, &source, &run);
    assert_eq!(stats.sections, 20);
    let mut dest = GuestRam::new(&layout);
    apply_stream(&stream, &mut dest);
    assert_eq!(dest, source);
    // At most 8 MiB when asked for more: 8 + 8 + 4.
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.set_ram_section_pages(usize::MAX);
    writer.write_config(&config_for(&layout)).unwrap();
    let stats = writer.write_ram(run, &source).unwrap();
    assert_eq!(stats.sections, 3);
    writer.finish().unwrap();
    let mut dest = GuestRam::new(&layout);
    let tables = apply_stream(&writer.into_inner().unwrap(), &mut dest);
    assert_eq!(tables, vec![1, 1, 1]);
    assert_eq!(dest, source);
}

#[test]
fn smaller_section_size_gives_more_sections() {
    let layout = single_region(1 << 20);
    let source = GuestRam::filled(&layout, 0x44);
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.set_ram_section_pages(64);
    writer.write_config(&config_for(&layout)).unwrap();
    let stats = writer
        .write_ram([PageRun::new(Gpa(0x10_0000), 256)], &source)
        .unwrap();
    assert_eq!(stats.sections, 4);
}

/// Encodes `runs` of `source` with `encoder`, returning (entries, data pages) per section.
fn section_shapes(
    encoder: &mut RamEncoder,
    layout: &RamLayout,
    source: &GuestRam,
    runs: Vec<PageRun>,
) -> Vec<(usize, u64)> {
    let mut shapes = Vec::new();
    encoder
        .encode(layout, runs, source, |section: &RamPages<'_>| {
            shapes.push((section.entries().len(), section.data_pages()));
            Ok::<(), ()>(())
        })
        .unwrap();
    shapes
}

#[test]
fn alternating_pages_respect_the_data_cap() {
    let pages = 4 * MAX_DATA_PAGES as u64;
    let layout = single_region(pages * STREAM_PAGE_SIZE.bytes());
    let mut source = GuestRam::new(&layout);
    for page in (0..pages).step_by(2) {
        source.write_pattern(0x10_0000 + page * STREAM_PAGE_SIZE.bytes(), 2);
    }
    let run = vec![PageRun::new(Gpa(0x10_0000), pages)];
    let shapes = section_shapes(
        &mut RamEncoder::with_section_pages(MAX_DATA_PAGES),
        &layout,
        &source,
        run,
    );
    // Two full sections, and the last zero page in a third.
    assert_eq!(shapes.len(), 3);
    assert!(
        shapes
            .iter()
            .all(|&(runs, data)| runs <= MAX_RUNS && data <= MAX_DATA_PAGES as u64)
    );
    assert_eq!(shapes.iter().map(|s| s.1).sum::<u64>(), pages / 2);
    assert_eq!(shapes.iter().map(|s| s.0).sum::<usize>(), pages as usize);
}

#[test]
fn scattered_zero_pages_respect_the_table_cap() {
    // Single zero pages in separate runs: one entry each, no data to fill a section.
    let runs = 3 * MAX_RUNS as u64;
    let layout = single_region(2 * runs * STREAM_PAGE_SIZE.bytes());
    let source = GuestRam::new(&layout);
    let scattered = (0..runs)
        .map(|i| PageRun::new(Gpa(0x10_0000 + 2 * i * STREAM_PAGE_SIZE.bytes()), 1))
        .collect();
    let shapes = section_shapes(&mut RamEncoder::new(), &layout, &source, scattered);
    assert!(shapes.len() >= 3, "{} sections", shapes.len());
    assert!(
        shapes
            .iter()
            .all(|&(entries, data)| entries <= MAX_RUNS && data == 0)
    );
    assert_eq!(shapes.iter().map(|s| s.0).sum::<usize>(), runs as usize);
}

#[test]
fn runs_of_adjacent_regions_stay_in_separate_entries() {
    let layout = RamLayout::new(vec![
        RegionDesc {
            gpa: Gpa(0),
            size: 4 * STREAM_PAGE_SIZE.bytes(),
        },
        RegionDesc {
            gpa: Gpa(4 * STREAM_PAGE_SIZE.bytes()),
            size: 4 * STREAM_PAGE_SIZE.bytes(),
        },
    ])
    .unwrap();
    for byte in [0, 0x77] {
        let source = GuestRam::filled(&layout, byte);
        let runs = [
            PageRun::new(Gpa(2 * STREAM_PAGE_SIZE.bytes()), 2),
            PageRun::new(Gpa(4 * STREAM_PAGE_SIZE.bytes()), 2),
        ];
        let (stream, _) = stream_with_ram(&layout, &source, &runs);
        let mut dest = GuestRam::filled(&layout, 0xee);
        assert_eq!(apply_stream(&stream, &mut dest), vec![2]);
        for gpa in [2 * STREAM_PAGE_SIZE.bytes(), 4 * STREAM_PAGE_SIZE.bytes()] {
            let sent = dest.slice(gpa, 2 * STREAM_PAGE_SIZE.bytes_usize()).unwrap();
            assert!(sent.iter().all(|&b| b == byte));
        }
    }
}

#[test]
fn zero_memory_costs_one_entry_whatever_its_size() {
    let layout = single_region(16 << 20);
    let ram = GuestRam::new(&layout);
    let (_, stats) = stream_with_ram(&layout, &ram, &[PageRun::new(Gpa(0x10_0000), 4096)]);
    assert_eq!((stats.sections, stats.bytes), (1, 12 + 8 + 16));
}

#[test]
fn writer_refuses_runs_outside_ram_before_reading_them() {
    let layout = sample_layout();
    let ram = sample_ram();
    let bad = [
        (PageRun::new(Gpa(0xff000), 2), "crosses the end of region 0"),
        (PageRun::new(Gpa(1 << 31), 1), "in the hole"),
        (PageRun::new(Gpa((1 << 32) + 0x3_f000), 2), "past region 1"),
        (PageRun::new(Gpa(u64::MAX - 0xfff), 1), "wraps"),
    ];
    for (run, why) in bad {
        let mut writer = StreamWriter::new(Vec::new()).unwrap();
        writer.write_config(&config_for(&layout)).unwrap();
        let before = writer.bytes_written();
        let err = writer.write_ram([run], &ram).unwrap_err();
        assert!(
            matches!(err, WriteError::Ram(RamSectionError::OutsideRam { .. })),
            "{why}: {err:?}"
        );
        assert_eq!(writer.bytes_written(), before, "{why}");
    }
    for run in [PageRun::new(Gpa(0x800), 1), PageRun::new(Gpa(0), 0)] {
        let mut writer = StreamWriter::new(Vec::new()).unwrap();
        writer.write_config(&config_for(&layout)).unwrap();
        assert!(matches!(
            writer.write_ram([run], &ram),
            Err(WriteError::Ram(RamSectionError::BadRun { .. }))
        ));
    }
}

/// A `RamPages` payload made by hand: `(gpa, pages, flags)` entries, then `data`.
fn ram_payload(entries: &[(u64, u32, u32)], data: &[u8]) -> Vec<u8> {
    let mut payload = (entries.len() as u32).to_le_bytes().to_vec();
    payload.extend_from_slice(&0u32.to_le_bytes());
    for &(gpa, pages, flags) in entries {
        payload.extend_from_slice(&gpa.to_le_bytes());
        payload.extend_from_slice(&pages.to_le_bytes());
        payload.extend_from_slice(&flags.to_le_bytes());
    }
    payload.extend_from_slice(data);
    payload
}

/// Reads a stream of the sample config and one hand-made `RamPages` section.
fn read_hand_made(payload: &[u8]) -> Result<(), ReadError> {
    let config = config_for(&sample_layout());
    let mut stream = StreamHeader::new(CURRENT_VERSION).to_bytes().to_vec();
    stream.extend(encode_frame(1, 0, &config.encode()));
    stream.extend(encode_frame(2, 0, payload));
    let mut reader = StreamReader::new(stream.as_slice())?;
    reader.next_section()?;
    reader.next_section().map(|_| ())
}

fn ram_error(result: Result<(), ReadError>) -> RamSectionError {
    match result {
        Err(ReadError::Malformed {
            source: PayloadError::Ram(err),
            pos,
        }) => {
            assert_eq!((pos.index, pos.kind), (1, 2));
            err
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn reader_refuses_runs_outside_ram() {
    let page = vec![1u8; STREAM_PAGE_SIZE.bytes_usize()];
    assert!(read_hand_made(&ram_payload(&[(0, 1, 0)], &page)).is_ok());
    for (gpa, pages) in [(0xff000, 2), (1 << 31, 1), (!0xfff, 1)] {
        assert!(matches!(
            ram_error(read_hand_made(&ram_payload(&[(gpa, pages, RUN_ZERO)], &[]))),
            RamSectionError::OutsideRam { .. }
        ));
    }
    assert!(matches!(
        ram_error(read_hand_made(&ram_payload(&[(0x800, 1, RUN_ZERO)], &[]))),
        RamSectionError::BadRun { .. }
    ));
    assert!(matches!(
        ram_error(read_hand_made(&ram_payload(&[(0, 0, RUN_ZERO)], &[]))),
        RamSectionError::BadRun { .. }
    ));
}

#[test]
fn reader_refuses_data_of_the_wrong_length_and_unknown_run_flags() {
    let page = vec![1u8; STREAM_PAGE_SIZE.bytes_usize()];
    assert!(matches!(
        ram_error(read_hand_made(&ram_payload(&[(0, 2, 0)], &page))),
        RamSectionError::DataLength {
            declared_pages: 2,
            data_bytes: 4096
        }
    ));
    assert!(matches!(
        ram_error(read_hand_made(&ram_payload(&[(0, 1, RUN_ZERO)], &page))),
        RamSectionError::DataLength { .. }
    ));
    assert!(matches!(
        ram_error(read_hand_made(&ram_payload(&[(0, 1, 2)], &page))),
        RamSectionError::RunFlags { flags: 2, .. }
    ));
    let mut too_many = ram_payload(&[], &[]);
    too_many[..4].copy_from_slice(&(MAX_RUNS as u32 + 1).to_le_bytes());
    assert!(matches!(
        ram_error(read_hand_made(&too_many)),
        RamSectionError::TooManyRuns { .. }
    ));
}

#[test]
fn memory_errors_keep_their_errno_and_range() {
    let layout = sample_layout();
    let failing_read = |_: Gpa, _: &mut [u8]| -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EFAULT))
    };
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.write_config(&config_for(&layout)).unwrap();
    let err = writer
        .write_ram([PageRun::new(Gpa(0x2000), 3)], &failing_read)
        .unwrap_err();
    let WriteError::Memory(err) = err else {
        panic!("{err:?}");
    };
    assert_eq!(
        (err.write, err.gpa, err.len, err.source.raw_os_error()),
        (
            false,
            Gpa(0x2000),
            3 * STREAM_PAGE_SIZE.bytes(),
            Some(libc::EFAULT)
        )
    );

    let (stream, _) = stream_with_ram(&layout, &sample_ram(), &[PageRun::new(Gpa(0x1000), 1)]);
    let mut reader = StreamReader::new(stream.as_slice()).unwrap();
    reader.next_section().unwrap();
    let Section::RamPages(pages) = reader.next_section().unwrap() else {
        panic!("not RAM");
    };
    let mut failing_write =
        |_: Gpa, _: &[u8]| -> io::Result<()> { Err(io::Error::from_raw_os_error(libc::EIO)) };
    let err = pages.apply(&mut failing_write).unwrap_err();
    assert_eq!(
        (err.write, err.gpa, err.source.raw_os_error()),
        (true, Gpa(0x1000), Some(libc::EIO))
    );
}

/// Writes a stream of `layout` with one `write_ram_parallel(runs)` on `workers` threads and
/// sections of `section_pages`, returning the stream and stats.
fn stream_with_ram_parallel(
    layout: &RamLayout,
    ram: &GuestRam,
    runs: &[PageRun],
    workers: usize,
    section_pages: usize,
) -> (Vec<u8>, vfmig_migration::stream::RamStats) {
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.set_ram_section_pages(section_pages);
    writer.write_config(&config_for(layout)).unwrap();
    let stats = writer.write_ram_parallel(runs, ram, workers).unwrap();
    writer.finish().unwrap();
    (writer.into_inner().unwrap(), stats)
}

#[test]
fn parallel_ram_writer_sends_every_page_once_with_the_same_stats() {
    let layout = sample_layout();
    let source = sample_ram();
    // Runs longer than a section, shorter, and crossing the cut between pieces.
    let runs = [
        PageRun::new(Gpa(3 * STREAM_PAGE_SIZE.bytes()), 200),
        PageRun::new(Gpa(230 * STREAM_PAGE_SIZE.bytes()), 1),
        PageRun::new(Gpa((1 << 32) + STREAM_PAGE_SIZE.bytes()), 63),
    ];
    let (_, serial) = stream_with_ram(&layout, &source, &runs);
    for workers in [2, 3, 5] {
        let (stream, stats) = stream_with_ram_parallel(&layout, &source, &runs, workers, 64);
        assert_eq!(
            (stats.pages, stats.zero_pages, stats.bytes as usize),
            (
                serial.pages,
                serial.zero_pages,
                stream.len() - 16 - stream_overhead(&stream)
            ),
            "{workers} workers"
        );
        let mut dest = GuestRam::filled(&layout, 0xee);
        let tables = apply_stream(&stream, &mut dest);
        assert!(
            tables.len() >= 4,
            "{workers} workers: {} sections",
            tables.len()
        );
        assert_only_runs_copied(&layout, &runs, &source, &dest);
    }
}

/// Bytes of `stream` that are not RAM sections: its config section and its end section.
fn stream_overhead(stream: &[u8]) -> usize {
    let mut reader = StreamReader::new(stream).unwrap();
    let mut other = 0;
    let mut before = reader.bytes_read();
    loop {
        let section = reader.next_section().unwrap();
        let ram = matches!(section, Section::RamPages(_));
        let end = matches!(section, Section::End(_));
        let after = reader.bytes_read();
        if !ram {
            other += (after - before) as usize;
        }
        before = after;
        if end {
            return other;
        }
    }
}

#[test]
fn parallel_ram_writer_refuses_a_run_outside_ram() {
    let layout = sample_layout();
    let source = sample_ram();
    let runs = [
        PageRun::new(Gpa(0), 100),
        PageRun::new(Gpa(2 << 20), 1),
        PageRun::new(Gpa(200 * STREAM_PAGE_SIZE.bytes()), 10),
    ];
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.write_config(&config_for(&layout)).unwrap();
    let err = writer.write_ram_parallel(&runs, &source, 2).unwrap_err();
    assert!(
        matches!(err, WriteError::Ram(RamSectionError::OutsideRam { gpa, pages: 1 }) if gpa == Gpa(2 << 20)),
        "{err:?}"
    );
}

#[test]
fn a_page_counter_counts_every_page_written_serial_or_parallel() {
    let layout = sample_layout();
    let source = sample_ram();
    let runs = [
        PageRun::new(Gpa(3 * STREAM_PAGE_SIZE.bytes()), 200),
        PageRun::new(Gpa((1 << 32) + STREAM_PAGE_SIZE.bytes()), 63),
    ];
    for workers in [1, 3] {
        let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut writer = StreamWriter::new(Vec::new()).unwrap();
        writer.set_ram_section_pages(64);
        writer.count_pages_into(counter.clone());
        writer.write_config(&config_for(&layout)).unwrap();
        writer.write_ram_parallel(&runs, &source, workers).unwrap();
        let counted = counter.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(counted, 263, "{workers} workers");
    }
}
