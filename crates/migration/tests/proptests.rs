//! Property tests: no bytes make the reader panic, and what the writer writes the reader
//! gives back (sections equal, RAM equal to the source on every page sent).
#![allow(clippy::cast_possible_truncation)]

mod common;

use common::{GuestRam, Owned};
use proptest::prelude::*;
use vfmig_migration::stream::{
    CURRENT_VERSION, DeviceChunk, DeviceConfig, DeviceDesc, Iteration, Phase, RamEncoder,
    RamLayout, RamPages, RegionDesc, StreamConfig, StreamHeader, StreamWriter,
};
use vfmig_migration::{DeviceIndex, Gpa, PageRun, STREAM_PAGE_SIZE};

#[path = "../fuzz/harness.rs"]
mod harness;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_the_reader(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        harness::read_stream(&data);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut stream = StreamHeader::new(CURRENT_VERSION).to_bytes().to_vec();
        stream.extend_from_slice(&data);
        harness::read_stream(&stream);
    }

    #[test]
    fn arbitrary_frames_with_valid_checksums_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        harness::read_framed(&data);
    }
}

/// Up to four regions of 1–16 pages with gaps of 0–3 pages (adjacent regions included).
fn layout_strategy() -> impl Strategy<Value = RamLayout> {
    proptest::collection::vec((0u64..4, 1u64..=16), 1..=4).prop_map(|shapes| {
        let mut next = 0u64;
        let regions = shapes
            .into_iter()
            .map(|(gap, pages)| {
                let gpa = next + gap * STREAM_PAGE_SIZE.bytes();
                next = gpa + pages * STREAM_PAGE_SIZE.bytes();
                RegionDesc {
                    gpa: Gpa(gpa),
                    size: pages * STREAM_PAGE_SIZE.bytes(),
                }
            })
            .collect();
        RamLayout::new(regions).unwrap()
    })
}

fn config_strategy() -> impl Strategy<Value = StreamConfig> {
    let device = (
        "[a-z][a-z-]{0,20}",
        proptest::collection::vec(any::<u8>(), 0..64),
    );
    (layout_strategy(), proptest::collection::vec(device, 0..4)).prop_map(|(layout, devices)| {
        let devices = devices
            .into_iter()
            .enumerate()
            .map(|(i, (kind, config))| DeviceDesc {
                id: DeviceIndex(i as u32 * 3 + 1),
                kind,
                config,
            })
            .collect();
        StreamConfig::new(layout, devices).unwrap()
    })
}

/// Source RAM for `layout`: each page zero, or filled from its own seed.
fn fill(layout: &RamLayout, seeds: &[Option<u64>]) -> GuestRam {
    let mut ram = GuestRam::new(layout);
    let mut seeds = seeds.iter().cycle();
    for region in layout.regions() {
        for page in 0..region.size / STREAM_PAGE_SIZE.bytes() {
            if let Some(Some(seed)) = seeds.next() {
                ram.write_pattern(region.gpa.raw() + page * STREAM_PAGE_SIZE.bytes(), *seed);
            }
        }
    }
    ram
}

/// Runs inside the regions of `layout`, chosen by (region, first page, pages) fractions.
fn runs_in(layout: &RamLayout, picks: &[(usize, u64, u64)]) -> Vec<PageRun> {
    picks
        .iter()
        .map(|&(region, first, len)| {
            let region = layout.regions()[region % layout.regions().len()];
            let pages = region.size / STREAM_PAGE_SIZE.bytes();
            let first = first % pages;
            let len = 1 + len % (pages - first);
            PageRun::new(
                Gpa(region.gpa.raw() + first * STREAM_PAGE_SIZE.bytes()),
                len,
            )
        })
        .collect()
}

/// One step of a generated stream after the config.
#[derive(Clone, Debug)]
enum Step {
    Iteration(u64, u64),
    Ram(Vec<(usize, u64, u64)>),
    Chunk(usize, bool, u64, Vec<u8>),
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(n, p)| Step::Iteration(n, p)),
        proptest::collection::vec((any::<usize>(), any::<u64>(), any::<u64>()), 1..4)
            .prop_map(Step::Ram),
        (
            any::<usize>(),
            any::<bool>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..3000)
        )
            .prop_map(|(d, stop, it, data)| Step::Chunk(d, stop, it, data)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn written_streams_read_back_identically(
        config in config_strategy(),
        seeds in proptest::collection::vec(proptest::option::of(any::<u64>()), 1..40),
        steps in proptest::collection::vec(step_strategy(), 0..12),
        configs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 4),
    ) {
        let source = fill(config.ram(), &seeds);
        let mut expected = vec![Owned::Config(config.clone())];
        let mut sent = GuestRam::filled(config.ram(), 0xee);
        let mut writer = StreamWriter::new(Vec::new()).unwrap();
        writer.set_ram_section_pages(64);
        writer.write_config(&config).unwrap();
        let devices: Vec<DeviceIndex> = config.devices().iter().map(|d| d.id).collect();
        for step in &steps {
            match step {
                Step::Iteration(number, pages) => {
                    let iteration = Iteration { number: *number, pages: *pages };
                    writer.write_iteration(iteration).unwrap();
                    expected.push(Owned::Iteration(iteration));
                }
                Step::Ram(picks) => {
                    let runs = runs_in(config.ram(), picks);
                    let stats = writer.write_ram(runs.iter().copied(), &source).unwrap();
                    // Pages of one call rarely exceed a section: summarise per call.
                    prop_assert_eq!(stats.sections, 1);
                    let zero = runs.iter().flat_map(|run| {
                        (0..run.pages).map(move |p| run.gpa.raw() + p * STREAM_PAGE_SIZE.bytes())
                    }).filter(|&gpa| source.page(gpa).iter().all(|&b| b == 0)).count() as u64;
                    let pages = runs.iter().map(|run| run.pages).sum::<u64>();
                    expected.push(Owned::Ram { data_pages: pages - zero, zero_pages: zero });
                    for run in &runs {
                        for p in 0..run.pages {
                            let gpa = run.gpa.raw() + p * STREAM_PAGE_SIZE.bytes();
                            sent.slice_mut(gpa, STREAM_PAGE_SIZE.bytes_usize()).unwrap()
                                .copy_from_slice(source.page(gpa));
                        }
                    }
                }
                Step::Chunk(device, stop, iteration, data) => {
                    let Some(&device) = devices.get(device % devices.len().max(1)) else {
                        continue;
                    };
                    let phase = if *stop { Phase::StopCopy } else { Phase::PreCopy };
                    writer.write_device_chunk(&DeviceChunk {
                        device, phase, iteration: *iteration, data,
                    }).unwrap();
                    expected.push(Owned::Chunk(device, phase, *iteration, data.clone()));
                }
            }
        }
        for (device, data) in devices.iter().zip(&configs) {
            writer.write_device_config(&DeviceConfig { device: *device, data }).unwrap();
            expected.push(Owned::DeviceConfig(*device, data.clone()));
        }
        writer.finish().unwrap();
        let stream = writer.into_inner().unwrap();

        let mut received = GuestRam::filled(config.ram(), 0xee);
        let sections = common::read_body(stream.as_slice(), &mut received).unwrap();
        prop_assert_eq!(sections, expected);
        prop_assert_eq!(received, sent);
        // And the fuzz harness's own checks (re-encoding gives the same bytes) hold.
        prop_assert!(harness::read_stream(&stream));
    }

    #[test]
    fn config_encoding_round_trips(config in config_strategy()) {
        prop_assert_eq!(StreamConfig::decode(&config.encode()), Ok(config));
    }

    #[test]
    fn encoder_output_decodes_to_the_pages_it_read(
        layout in layout_strategy(),
        seeds in proptest::collection::vec(proptest::option::of(any::<u64>()), 1..40),
        picks in proptest::collection::vec((any::<usize>(), any::<u64>(), any::<u64>()), 1..6),
        section_pages in 64usize..200,
    ) {
        let source = fill(&layout, &seeds);
        let runs = runs_in(&layout, &picks);
        let mut decoded = Vec::new();
        RamEncoder::with_section_pages(section_pages)
            .encode(&layout, runs.iter().copied(), &source, |pages: &RamPages<'_>| {
                for run in pages.runs() {
                    for p in 0..run.pages {
                        let data = run.data.map(|d| {
                            d[p as usize * STREAM_PAGE_SIZE.bytes_usize()..][..STREAM_PAGE_SIZE.bytes_usize()].to_vec()
                        });
                        decoded.push((run.gpa.raw() + p * STREAM_PAGE_SIZE.bytes(), data));
                    }
                }
                Ok::<(), ()>(())
            })
            .unwrap();
        let expected: Vec<_> = runs
            .iter()
            .flat_map(|run| (0..run.pages).map(move |p| run.gpa.raw() + p * STREAM_PAGE_SIZE.bytes()))
            .map(|gpa| {
                let page = source.page(gpa);
                (gpa, (!page.iter().all(|&b| b == 0)).then(|| page.to_vec()))
            })
            .collect();
        prop_assert_eq!(decoded, expected);
    }
}
