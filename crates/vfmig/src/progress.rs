//! What `vfmig vm migrate` and `vfmig demo` show while a migration runs: they poll the
//! source's `stats` (a [`MigrationStatus`]) and draw it.
//!
//! On a terminal (stderr is one), an indicatif bar, redrawn every 100 ms:
//!
//! ```text
//! ⠙ pre-copy  [##############>---------] it 3  pass 96.0 MiB / 160.0 MiB  412.0 MiB sent  1.1 GiB/s  ETA 0.1 s  vCPUs 70%
//! ```
//!
//! - the phase: `setup`, `pre-copy` (the guest runs, iterations go out), `stop-copy` (the
//!   guest is paused: this is the downtime), then how it ended;
//! - the bar and `pass`: the current pass, what the last sync found dirty (RAM pages at
//!   their size, device data), filled as it goes out (the engine's
//!   [`covered`](MigrationStatus::covered) count);
//! - `it N`: the pre-copy iteration;
//! - `sent`: all stream bytes sent so far;
//! - the rate: stream bytes per second over the last second (before that, the engine's own
//!   measure of the last iteration);
//! - ETA: when the current pass will have gone out, at the pace it has been covered over the
//!   last second (zero pages cost the stream almost nothing, so a mostly empty guest is
//!   covered faster than the stream rate says). The guest dirties more meanwhile, so
//!   pre-copy goes on with another pass until the convergence policy switches over: the ETA
//!   is of the pass, not of the migration, which nothing can know ahead;
//! - `vCPUs N%` while auto-converge throttles the guest in pre-copy.
//!
//! Elsewhere (a log, a pipe), one plain line per phase and per iteration, and nothing between:
//! a log keeps the story without a hundred redraws.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vfmig::control::ControlClient;
use vfmig_migration::engine::{MigrationState, MigrationStatus};

/// How far back the rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// The phase, as a person reads it.
pub(crate) fn phase(state: MigrationState) -> &'static str {
    match state {
        MigrationState::None => "starting",
        MigrationState::Setup => "setup",
        MigrationState::Active => "pre-copy",
        MigrationState::StopCopy => "stop-copy",
        MigrationState::Completed => "completed",
        MigrationState::Failed => "failed",
        MigrationState::Cancelled => "cancelled",
        MigrationState::Unconfirmed => "unconfirmed",
    }
}

/// Bytes in binary units: `512 B`, `4.0 KiB`, `812.0 MiB`, `1.2 GiB`.
pub(crate) fn bytes(n: u64) -> String {
    scaled(n as f64)
}

/// A non-negative number of bytes in binary units.
fn scaled(n: f64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024.0 {
        return format!("{n:.0} B");
    }
    let mut value = n / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// A rate in bytes per second, in the units of [`bytes`].
pub(crate) fn rate(per_sec: f64) -> String {
    let moving = per_sec.is_finite() && per_sec > 0.0;
    format!("{}/s", scaled(if moving { per_sec } else { 0.0 }))
}

/// A time left: `0.4 s`, `12 s`, `2 min 05 s`, `3 h 07 min`.
pub(crate) fn eta(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..10 => format!("{:.1} s", d.as_secs_f64()),
        10..60 => format!("{secs} s"),
        60..3600 => format!("{} min {:02} s", secs / 60, secs % 60),
        _ => format!("{} h {:02} min", secs / 3600, secs % 3600 / 60),
    }
}

/// The time for `left` bytes at `per_sec`, if that rate moves at all.
pub(crate) fn time_left(left: u64, per_sec: f64) -> Option<Duration> {
    if !(per_sec.is_finite() && per_sec > 0.0) {
        return None;
    }
    Duration::try_from_secs_f64(left as f64 / per_sec).ok()
}

/// Stream bytes per second, from the bytes sent as seen at successive times.
#[derive(Debug, Default)]
pub(crate) struct RateMeter {
    samples: VecDeque<(Duration, u64)>,
}

impl RateMeter {
    /// `sent` bytes in all, seen at `at` (from any fixed start).
    pub(crate) fn push(&mut self, at: Duration, sent: u64) {
        self.samples.push_back((at, sent));
        // Keep one sample at or before the window's start, so the window is always covered.
        while self
            .samples
            .get(1)
            .is_some_and(|&(t, _)| at.saturating_sub(t) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// The rate over the last [`RATE_WINDOW`] (or all samples, if less), if two samples
    /// lie apart in time.
    pub(crate) fn rate(&self) -> Option<f64> {
        let (&(t0, b0), &(t1, b1)) = (self.samples.front()?, self.samples.back()?);
        let secs = t1.checked_sub(t0)?.as_secs_f64();
        (secs > 0.0).then(|| b1.saturating_sub(b0) as f64 / secs)
    }
}

/// What one look at a running migration shows: its status and the rates it is going at.
#[derive(Clone, Debug)]
pub(crate) struct View<'a> {
    pub(crate) status: &'a MigrationStatus,
    /// Stream bytes per second, if measured.
    pub(crate) rate: Option<f64>,
    /// Guest state ([`MigrationStatus::covered`]) per second, if measured.
    pub(crate) cover_rate: Option<f64>,
}

impl View<'_> {
    /// The rate shown: measured here, else the engine's last iteration's.
    fn per_sec(&self) -> f64 {
        self.rate
            .filter(|r| *r > 0.0)
            .unwrap_or(self.status.bandwidth)
    }

    /// The bar's length and position: the current pass, and how much of it went out.
    pub(crate) fn pass(&self) -> (u64, u64) {
        let s = self.status;
        (s.remaining, s.remaining.saturating_sub(s.pass_remaining))
    }

    /// The ETA of the current pass, while one goes out.
    pub(crate) fn eta(&self) -> Option<Duration> {
        let moving = matches!(
            self.status.state,
            MigrationState::Active | MigrationState::StopCopy
        );
        let pace = self
            .cover_rate
            .filter(|r| *r > 0.0)
            .unwrap_or_else(|| self.per_sec());
        moving
            .then(|| time_left(self.status.pass_remaining, pace))
            .flatten()
    }

    /// Everything but the phase and the bar: iteration, pass, bytes, rate, ETA, throttle.
    pub(crate) fn message(&self) -> String {
        let s = self.status;
        let (len, pos) = self.pass();
        let mut m = format!(
            "it {}  pass {} / {}  {} sent  {}  ETA {}",
            s.iteration,
            bytes(pos),
            bytes(len),
            bytes(s.transferred),
            rate(self.per_sec()),
            self.eta().map_or_else(|| "-".to_string(), eta),
        );
        // The throttle applies while the guest runs through pre-copy.
        if s.run_percent < 100 && s.state == MigrationState::Active {
            m.push_str(&format!("  vCPUs {}%", s.run_percent));
        }
        m
    }

    /// The line written where there is no terminal.
    pub(crate) fn plain(&self) -> String {
        format!("migration {}: {}", phase(self.status.state), self.message())
    }
}

/// Where progress goes.
enum Display {
    Bar(ProgressBar),
    Lines { last: Option<(MigrationState, u64)> },
}

impl Display {
    fn new(terminal: bool) -> Display {
        if !terminal {
            return Display::Lines { last: None };
        }
        let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {prefix:<9} [{bar:24}] {wide_msg}")
        {
            bar.set_style(style.progress_chars("#>-"));
        }
        Display::Bar(bar)
    }

    fn show(&mut self, view: &View<'_>) {
        match self {
            Display::Bar(bar) => {
                let (len, pos) = view.pass();
                bar.set_length(len.max(1));
                bar.set_position(pos);
                bar.set_prefix(phase(view.status.state));
                bar.set_message(view.message());
            }
            Display::Lines { last } => {
                let now = Some((view.status.state, view.status.iteration));
                if *last != now {
                    eprintln!("{}", view.plain());
                    *last = now;
                }
            }
        }
    }

    fn finish(&mut self, view: &View<'_>) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
            eprintln!("{}", view.plain());
        }
    }
}

/// Polls the migration's `stats` until it ends, showing its progress on stderr (a bar on a
/// terminal, plain lines elsewhere). Returns the final status.
pub(crate) fn follow_migration(control: &ControlClient) -> anyhow::Result<MigrationStatus> {
    let terminal = std::io::stderr().is_terminal();
    let mut display = Display::new(terminal);
    let (mut stream, mut covered) = (RateMeter::default(), RateMeter::default());
    let start = Instant::now();
    loop {
        let status = control.stats()?;
        let now = start.elapsed();
        stream.push(now, status.transferred);
        covered.push(now, status.covered);
        let view = View {
            status: &status,
            rate: stream.rate(),
            cover_rate: covered.rate(),
        };
        display.show(&view);
        if status.state.is_final() {
            display.finish(&view);
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(if terminal { 100 } else { 50 }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: MigrationState) -> MigrationStatus {
        MigrationStatus {
            state,
            iteration: 3,
            transferred: 412 << 20,
            remaining: 160 << 20,
            pass_remaining: 64 << 20,
            bandwidth: 0.0,
            ..Default::default()
        }
    }

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(4096), "4.0 KiB");
        assert_eq!(bytes(812 << 20), "812.0 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn a_rate_is_bytes_per_second() {
        assert_eq!(rate(f64::from(1u32 << 30)), "1.0 GiB/s");
        assert_eq!(rate(f64::NAN), "0 B/s");
    }

    #[test]
    fn an_eta_is_shown_in_the_units_that_fit() {
        assert_eq!(eta(Duration::from_millis(400)), "0.4 s");
        assert_eq!(eta(Duration::from_secs(42)), "42 s");
        assert_eq!(eta(Duration::from_secs(125)), "2 min 05 s");
        assert_eq!(eta(Duration::from_secs(3 * 3600 + 7 * 60)), "3 h 07 min");
    }

    #[test]
    fn the_rate_is_the_bytes_of_the_last_second_over_its_time() {
        let mut meter = RateMeter::default();
        meter.push(Duration::ZERO, 0);
        meter.push(Duration::from_millis(1500), 1000);
        meter.push(Duration::from_millis(2000), 2000);
        meter.push(Duration::from_millis(2500), 3000);
        // The window reaches back to 1.5 s: 2000 bytes in 1 s.
        assert_eq!(meter.rate(), Some(2000.0));
    }

    #[test]
    fn one_sample_has_no_rate() {
        let mut meter = RateMeter::default();
        meter.push(Duration::from_secs(1), 100);
        assert_eq!(meter.rate(), None);
    }

    #[test]
    fn the_eta_is_what_is_left_of_the_pass_at_the_pace_it_is_covered() {
        let s = status(MigrationState::Active);
        let view = View {
            status: &s,
            rate: Some(1e3),
            cover_rate: Some(f64::from(32u32 << 20)),
        };
        assert_eq!(view.eta(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn without_a_measured_rate_the_engines_bandwidth_is_used() {
        let s = MigrationStatus {
            bandwidth: f64::from(64u32 << 20),
            ..status(MigrationState::Active)
        };
        let view = View {
            status: &s,
            rate: None,
            cover_rate: None,
        };
        assert_eq!(view.eta(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn a_migration_that_is_not_sending_has_no_eta() {
        let s = status(MigrationState::Setup);
        let view = View {
            status: &s,
            rate: Some(1e6),
            cover_rate: None,
        };
        assert_eq!(view.eta(), None);
        assert!(view.message().contains("ETA -"), "{}", view.message());
    }

    #[test]
    fn the_bar_is_the_pass_filled_by_what_went_out() {
        let s = status(MigrationState::Active);
        let view = View {
            status: &s,
            rate: None,
            cover_rate: None,
        };
        assert_eq!(view.pass(), (160 << 20, 96 << 20));
    }

    #[test]
    fn the_plain_line_names_phase_iteration_pass_bytes_rate_and_eta() {
        let s = status(MigrationState::StopCopy);
        let view = View {
            status: &s,
            rate: Some(f64::from(32u32 << 20)),
            cover_rate: None,
        };
        assert_eq!(
            view.plain(),
            "migration stop-copy: it 3  pass 96.0 MiB / 160.0 MiB  412.0 MiB sent  32.0 MiB/s  ETA 2.0 s"
        );
    }

    #[test]
    fn a_paused_guest_shows_no_vcpu_share() {
        let s = MigrationStatus {
            run_percent: 70,
            ..status(MigrationState::StopCopy)
        };
        let view = View {
            status: &s,
            rate: None,
            cover_rate: None,
        };
        assert!(!view.message().contains("vCPUs"), "{}", view.message());
    }

    #[test]
    fn a_throttled_guest_shows_its_vcpu_share() {
        let s = MigrationStatus {
            run_percent: 70,
            ..status(MigrationState::Active)
        };
        let view = View {
            status: &s,
            rate: None,
            cover_rate: None,
        };
        assert!(view.message().ends_with("vCPUs 70%"), "{}", view.message());
    }
}
