//! The SVG chart of a completed migration, drawn from its [`MigrationStats`] (plotters, SVG
//! backend only: text goes into the file as `<text>` elements, so nothing here needs fonts).
//!
//! One column per pre-copy iteration, labelled `#0`, `#1`, ..., and a last one, `stop-copy`,
//! for the downtime (the guest paused: the last dirty pages and device state, the
//! switch-over). One panel per quantity, top to bottom:
//!
//! | panel | an iteration's column | the `stop-copy` column |
//! |---|---|---|
//! | dirty pages | pages found dirty for it (all of RAM for `#0`) | pages of the final sync |
//! | MiB sent | stream bytes of RAM and of device data, stacked | the same, sent paused |
//! | rate, MiB/s | its bytes over its time | its bytes over the downtime |
//! | time, ms | its time | the downtime; a line marks the downtime the estimate expected |
//! | vCPU run % (only when auto-converge throttled) | the vCPUs' share of run time | — |
//!
//! The title carries the totals: iterations, downtime, total time, bytes, why pre-copy ended.

use std::path::Path;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use vfmig_migration::engine::MigrationStats;

const MIB: f64 = 1024.0 * 1024.0;
const PANEL_HEIGHT: u32 = 220;
const RAM: RGBColor = RGBColor(0x3b, 0x6e, 0xa8);
const DEVICE: RGBColor = RGBColor(0xe0, 0x8a, 0x2c);
const PAUSED: RGBColor = RGBColor(0xc0, 0x39, 0x2b);

/// One column: a pre-copy iteration, or the stop-copy.
#[derive(Clone, Debug, PartialEq)]
struct Column {
    label: String,
    dirty_pages: f64,
    ram_mib: f64,
    device_mib: f64,
    ms: f64,
    run_percent: f64,
}

impl Column {
    fn mib(&self) -> f64 {
        self.ram_mib + self.device_mib
    }

    fn rate(&self) -> f64 {
        if self.ms > 0.0 {
            self.mib() / (self.ms / 1e3)
        } else {
            0.0
        }
    }
}

/// The label of pre-copy iteration `number`.
pub(crate) fn iteration_label(number: u64) -> String {
    format!("#{number}")
}

/// The label of the stop-copy column.
pub(crate) const STOP_COPY: &str = "stop-copy";

/// The iterations, then the stop-copy: what the totals hold beyond the iterations' sums.
fn columns(stats: &MigrationStats) -> Vec<Column> {
    let mut cols: Vec<Column> = stats
        .iterations
        .iter()
        .map(|it| Column {
            label: iteration_label(it.number),
            dirty_pages: it.dirty_pages as f64,
            ram_mib: it.ram_bytes as f64 / MIB,
            device_mib: it.device_bytes as f64 / MIB,
            ms: it.duration_ms,
            run_percent: f64::from(it.run_percent),
        })
        .collect();
    let sum = |f: fn(&vfmig_migration::engine::IterationStats) -> u64| -> u64 {
        stats.iterations.iter().map(f).sum()
    };
    cols.push(Column {
        label: STOP_COPY.into(),
        dirty_pages: stats.pages.saturating_sub(sum(|it| it.dirty_pages)) as f64,
        ram_mib: stats.ram_bytes.saturating_sub(sum(|it| it.ram_bytes)) as f64 / MIB,
        device_mib: stats.device_bytes.saturating_sub(sum(|it| it.device_bytes)) as f64 / MIB,
        ms: stats.downtime_ms,
        run_percent: 0.0,
    });
    cols
}

/// One panel: per column, values stacked from the bottom, one per layer colour. Its caption
/// says what the colours and the line mean (a legend box would hide bars).
struct Bars {
    caption: String,
    y_desc: &'static str,
    layers: Vec<RGBColor>,
    stacks: Vec<Vec<f64>>,
    /// A horizontal line across the panel.
    line: Option<f64>,
}

impl Bars {
    /// A panel of one value per column (the stop-copy column, if `values` has one, is drawn
    /// in the colour of a paused guest).
    fn single(caption: &str, y_desc: &'static str, values: Vec<f64>) -> Bars {
        Bars {
            caption: caption.to_string(),
            y_desc,
            layers: vec![RAM],
            stacks: values.into_iter().map(|v| vec![v]).collect(),
            line: None,
        }
    }
}

/// A number as an axis or a bar names it: `950`, `12.5`, `150k`, `3.2M`.
pub(crate) fn compact(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The chart as SVG text.
pub(crate) fn render(stats: &MigrationStats) -> anyhow::Result<String> {
    let cols = columns(stats);
    let labels: Vec<String> = cols.iter().map(|c| c.label.clone()).collect();
    let mut panels = vec![
        Bars::single(
            "dirty pages",
            "pages",
            cols.iter().map(|c| c.dirty_pages).collect(),
        ),
        Bars {
            caption: "MiB sent (blue: RAM, orange: device data)".into(),
            y_desc: "MiB",
            layers: vec![RAM, DEVICE],
            stacks: cols.iter().map(|c| vec![c.ram_mib, c.device_mib]).collect(),
            line: None,
        },
        Bars::single(
            "rate (stream bytes over time)",
            "MiB/s",
            cols.iter().map(Column::rate).collect(),
        ),
        Bars {
            line: Some(stats.expected_downtime_ms),
            ..Bars::single(
                &format!(
                    "time (stop-copy: the downtime; red line: the downtime expected, {:.1} ms)",
                    stats.expected_downtime_ms
                ),
                "ms",
                cols.iter().map(|c| c.ms).collect(),
            )
        },
    ];
    if stats.iterations.iter().any(|it| it.run_percent < 100) {
        let mut run: Vec<f64> = cols.iter().map(|c| c.run_percent).collect();
        run.pop();
        panels.push(Bars::single("vCPU run % (auto-converge)", "%", run));
    }
    let width = (120 + 56 * u32::try_from(cols.len()).unwrap_or(u32::MAX)).clamp(900, 8000);
    let height = 50 + PANEL_HEIGHT * u32::try_from(panels.len()).unwrap_or(1);
    let title = format!(
        "{} pre-copy iterations, downtime {:.1} ms (expected {:.1} ms), total {:.1} ms, {:.1} MiB sent; switch-over: {}",
        stats.iterations.len(),
        stats.downtime_ms,
        stats.expected_downtime_ms,
        stats.total_ms,
        stats.total_bytes as f64 / MIB,
        stats.switchover,
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(&title, ("sans-serif", 18))?;
        for (area, bars) in root.split_evenly((panels.len(), 1)).iter().zip(&panels) {
            draw(area, bars, &labels)?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// One panel: the bars of every column with their values on top, the columns named on the
/// x axis.
fn draw(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    bars: &Bars,
    labels: &[String],
) -> anyhow::Result<()> {
    let columns = u32::try_from(bars.stacks.len()).context("too many columns")?;
    let totals: Vec<f64> = bars.stacks.iter().map(|s| s.iter().sum()).collect();
    let tallest = totals
        .iter()
        .copied()
        .chain(bars.line)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let top = if tallest > 0.0 { tallest * 1.2 } else { 1.0 };
    // Segments 0..=columns-1, one per column.
    let mut chart = ChartBuilder::on(area)
        .caption(&bars.caption, ("sans-serif", 15))
        .margin(6)
        .x_label_area_size(24)
        .y_label_area_size(56)
        .build_cartesian_2d((0..columns.saturating_sub(1)).into_segmented(), 0f64..top)?;
    let name = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) => usize::try_from(*i)
            .ok()
            .and_then(|i| labels.get(i))
            .cloned()
            .unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_labels(bars.stacks.len() + 1)
        .x_label_formatter(&name)
        .y_desc(bars.y_desc)
        .y_labels(5)
        .y_label_formatter(&|v| compact(*v))
        .draw()?;
    let stop = labels.len().saturating_sub(1);
    let mut base = vec![0.0; bars.stacks.len()];
    for (k, &layer) in bars.layers.iter().enumerate() {
        let alone = bars.layers.len() == 1;
        let rects = (0u32..)
            .zip(&bars.stacks)
            .zip(base.iter_mut())
            .enumerate()
            .filter_map(|(col, ((i, stack), base))| {
                let value = *stack.get(k)?;
                // A column alone in its panel is the stop-copy's: drawn as the downtime.
                let color = if alone && col == stop && labels.len() == bars.stacks.len() {
                    PAUSED
                } else {
                    layer
                };
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), *base),
                        (SegmentValue::Exact(i + 1), *base + value),
                    ],
                    color.filled(),
                );
                bar.set_margin(0, 0, 6, 6);
                *base += value;
                Some(bar)
            });
        chart.draw_series(rects.collect::<Vec<_>>())?;
    }
    let value_style = ("sans-serif", 11)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series((0u32..).zip(&totals).map(|(i, total)| {
        Text::new(
            compact(*total),
            (SegmentValue::CenterOf(i), *total),
            value_style.clone(),
        )
    }))?;
    if let Some(value) = bars.line {
        chart.draw_series(LineSeries::new(
            [(SegmentValue::Exact(0), value), (SegmentValue::Last, value)],
            PAUSED.stroke_width(2),
        ))?;
    }
    Ok(())
}

/// Writes the chart of `stats` to `path`. A chart the plotting library cannot draw (it
/// panics on some axis ranges) is an error, not the end of the process.
pub(crate) fn write(stats: &MigrationStats, path: &Path) -> anyhow::Result<()> {
    let svg = std::panic::catch_unwind(|| render(stats))
        .map_err(|_| anyhow::anyhow!("the chart could not be drawn"))??;
    std::fs::write(path, svg).with_context(|| format!("writing the chart {}", path.display()))
}

/// The text of every `<text>` element of `svg` (entities left as they are).
#[cfg(test)]
pub(crate) fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use vfmig_migration::engine::IterationStats;

    use super::*;

    fn stats(iterations: u64, run_percent: u8) -> MigrationStats {
        let its: Vec<IterationStats> = (0..iterations)
            .map(|number| IterationStats {
                number,
                dirty_pages: 1000 >> number,
                ram_bytes: (1000 >> number) * 4096,
                device_bytes: 8192,
                duration_ms: 10.0,
                run_percent: if number == 0 { 100 } else { run_percent },
            })
            .collect();
        MigrationStats {
            downtime_ms: 12.5,
            expected_downtime_ms: 9.0,
            pages: its.iter().map(|it| it.dirty_pages).sum::<u64>() + 7,
            ram_bytes: its.iter().map(|it| it.ram_bytes).sum::<u64>() + 7 * 4096,
            device_bytes: 8192 * (iterations + 1),
            switchover: "converged".into(),
            iterations: its,
            ..Default::default()
        }
    }

    #[test]
    fn every_iteration_and_the_stop_copy_are_named() {
        let texts = texts(&render(&stats(5, 100)).unwrap());
        for n in 0..5 {
            assert!(texts.contains(&iteration_label(n)), "#{n} in {texts:?}");
        }
        assert!(texts.iter().any(|t| t == STOP_COPY), "{texts:?}");
    }

    #[test]
    fn forty_iterations_are_each_named() {
        let texts = texts(&render(&stats(40, 100)).unwrap());
        let missing: Vec<u64> = (0..40)
            .filter(|n| !texts.contains(&iteration_label(*n)))
            .collect();
        assert!(missing.is_empty(), "unnamed: {missing:?}");
    }

    #[test]
    fn the_title_gives_the_downtime() {
        let svg = render(&stats(3, 100)).unwrap();
        assert!(svg.contains("downtime 12.5 ms (expected 9.0 ms)"), "{svg}");
    }

    #[test]
    fn a_throttled_migration_has_a_run_percent_panel() {
        let svg = render(&stats(3, 70)).unwrap();
        assert!(svg.contains("vCPU run %"));
    }

    #[test]
    fn an_unthrottled_migration_has_no_run_percent_panel() {
        let svg = render(&stats(3, 100)).unwrap();
        assert!(!svg.contains("vCPU run %"));
    }

    #[test]
    fn the_stop_copy_column_holds_what_the_iterations_did_not_send() {
        let cols = columns(&stats(2, 100));
        let stop = cols.last().unwrap();
        assert_eq!(stop.dirty_pages, 7.0);
        assert_eq!(stop.ram_mib, 7.0 * 4096.0 / MIB);
        assert_eq!(stop.device_mib, 8192.0 / MIB);
        assert_eq!(stop.ms, 12.5);
    }

    #[test]
    fn a_migration_without_iterations_still_charts() {
        let svg = render(&MigrationStats::default()).unwrap();
        assert!(texts(&svg).iter().any(|t| t == STOP_COPY));
    }
}
