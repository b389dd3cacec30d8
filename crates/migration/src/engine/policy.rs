//! When to stop copying: the convergence policy, injected into the sender.
//!
//! The default, [`DowntimeLimit`], switches over when what is left — dirty RAM and the
//! devices' pending bytes — would cross the wire within the downtime limit at the bandwidth
//! measured so far, and another iteration would not halve it (or it is down to
//! [`SETTLED_DOWNTIME`]). When pre-copy reaches its iteration or time limit without that, it
//! gives up: the migration fails, naming the limit, and the guest runs on at the source. The
//! time limit ([`Convergence::max_time`]) also stops an iteration still sending RAM.
//!
//! # Why not switch over as soon as the rest fits
//!
//! The limit is the most downtime the user accepts, not a target: a guest that leaves 17 MB
//! after the first pass fits 300 ms at once, but the 10 ms that pass takes to send lets the
//! guest dirty a few hundred KB, so one more iteration cuts the downtime to the fixed costs of
//! the switch-over. The guest dirtied `dirty` bytes while `sent` bytes crossed, so the next
//! iteration (sending `dirty`) leaves about `dirty² / sent`: at most half of `dirty` exactly
//! when `2 · dirty ≤ sent`. Iterating while that holds ends within a few iterations (each
//! halves the rest), and the last allowed iteration switches over whenever the rest fits.
//!
//! # Why a limit fails the migration instead of forcing the switch-over
//!
//! QEMU switches over at its limits whatever the downtime will be. Here the downtime limit is
//! a promise: a switch-over that did not converge pauses the guest for as long as its dirty
//! set takes to cross the link (seconds, for a guest that out-runs it), and nothing in the
//! request said that was acceptable. Failing leaves the guest running, unharmed, where it
//! was; whoever asked can retry with a larger downtime limit, more bandwidth or
//! auto-converge. The one exception is a device without precise dirty tracking
//! ([`SwitchReason::AllMapped`]): every sync finds all of RAM dirty again, so no number of
//! iterations converges and the switch-over comes at once — the only way such a VM migrates.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the sender knows after an iteration and the sync that follows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// The iteration just finished, from 0.
    pub iteration: u64,
    /// Dirty RAM found by the sync, in bytes.
    pub dirty_bytes: u64,
    /// Device bytes pending, over all devices.
    pub device_pending: u64,
    /// Measured bandwidth, stream bytes per second.
    pub bandwidth: f64,
    /// Pre-copy time so far.
    pub elapsed: Duration,
    /// Stream bytes the iteration sent (RAM and device data).
    pub sent: u64,
    /// Some device reports every mapped page dirty (no precise tracking), or reports nothing
    /// and is counted so (no dirty tracking at all): every sync will find all of guest RAM
    /// dirty again, so further iterations cannot shrink what is left.
    pub all_mapped: bool,
}

impl Estimate {
    /// The downtime if the switch-over happened now.
    pub fn expected_downtime(&self) -> Duration {
        if self.bandwidth <= 0.0 {
            return Duration::MAX;
        }
        let bytes = self.dirty_bytes.saturating_add(self.device_pending) as f64;
        Duration::try_from_secs_f64(bytes / self.bandwidth).unwrap_or(Duration::MAX)
    }
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Another pre-copy iteration.
    Iterate,
    /// Pause the guest and copy the rest, for this reason.
    SwitchOver(SwitchReason),
    /// Pre-copy reached this limit without converging: the migration fails and the guest
    /// runs on at the source.
    GiveUp(Limit),
}

/// A limit of pre-copy that ends a migration which did not converge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The iteration limit, this many iterations.
    Iterations(u64),
    /// The time limit.
    Time(Duration),
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Iterations(n) => write!(f, "the iteration limit ({n} iterations)"),
            Limit::Time(t) => write!(f, "the time limit ({} ms)", t.as_millis()),
        }
    }
}

/// Why pre-copy ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchReason {
    /// The rest fits in the downtime limit.
    Converged,
    /// A device without precise tracking (all-mapped scope, or no dirty tracking at all)
    /// makes all RAM dirty on every sync: iterating more cannot help, so the switch-over
    /// comes after the first iteration (or whenever the rest already fits the limit).
    AllMapped,
}

impl std::fmt::Display for SwitchReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SwitchReason::Converged => "converged",
            SwitchReason::AllMapped => "all-mapped device (cannot converge)",
        })
    }
}

/// Decides between another iteration and the switch-over, and how much to slow the guest.
pub trait Convergence: Send {
    /// Called after each iteration's sync.
    fn decide(&mut self, estimate: &Estimate) -> Decision;

    /// Called after [`decide`](Self::decide) said [`Decision::Iterate`], with the stream bytes
    /// the iteration sent: the share of time the vCPUs may run from now on, in percent
    /// (`None`: no throttle). A guest that dirties faster than the link carries is slowed
    /// until what it leaves fits the limit (auto-converge).
    fn throttle(&mut self, estimate: &Estimate, sent: u64) -> Option<u8>;

    /// The most stream bytes per second the sender may put on the link (`None`: as fast as
    /// it carries). Part of the policy because the bandwidth its estimates divide by is what
    /// the link carries under this cap.
    fn max_bandwidth(&self) -> Option<u64>;

    /// How long pre-copy may run before it fails with [`Limit::Time`] (`None`: no limit).
    /// [`decide`](Self::decide) sees it between iterations; the sender also stops an
    /// iteration that is still sending when it passes (a first pass over a slow link can
    /// take far longer than the limit).
    fn max_time(&self) -> Option<Duration> {
        None
    }
}

/// A rest expected to take at most this long is sent at once, shrinking or not.
pub const SETTLED_DOWNTIME: Duration = Duration::from_millis(2);

/// How auto-converge slows the guest: the first step runs the vCPUs 80 % of the time, each
/// further step 10 points less, down to 5 %. A step is taken after an iteration in which the
/// guest dirtied more than half of what the link carried and what is left does not fit the
/// downtime limit (the first iteration, which sends all of RAM, is never counted).
pub const THROTTLE_FIRST: u8 = 80;
/// One step of auto-converge, in points of run time.
pub const THROTTLE_STEP: u8 = 10;
/// The least run time auto-converge leaves the guest.
pub const THROTTLE_FLOOR: u8 = 5;

/// The default policy: the downtime limit, an iteration limit and a time limit (reaching
/// either without converging fails the migration), auto-converge and a bandwidth cap.
///
/// Its [`Default`] is the one place the defaults are written: the command line shows them
/// and the control socket fills in what a request leaves out from it. On the wire (the
/// `migrate` command's arguments) the fields are `downtime_ms`, `max_iterations`,
/// `max_time_ms`, `auto_converge` and `max_bandwidth_mib`, each optional.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DowntimeLimit {
    /// The longest acceptable downtime (300 ms by default).
    #[serde(rename = "downtime_ms", with = "millis")]
    pub limit: Duration,
    /// Most pre-copy iterations (30 by default); the migration fails after the last one if
    /// it has not converged.
    pub max_iterations: u64,
    /// Longest pre-copy (120 s by default), checked after each iteration; the migration
    /// fails once it is over if it has not converged.
    #[serde(rename = "max_time_ms", with = "millis")]
    pub max_time: Duration,
    /// Slow the guest's vCPUs when it dirties faster than the link carries (on by default).
    pub auto_converge: bool,
    /// The most stream bytes per second, over pre-copy and stop-and-copy alike (`None`, the
    /// default: no cap). On the wire in whole MiB/s, at least 1.
    #[serde(
        rename = "max_bandwidth_mib",
        with = "mib_per_s",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_bandwidth: Option<u64>,
    /// The throttle now, in percent of run time (100: none). Not part of the request.
    #[serde(skip)]
    pub run_percent: u8,
}

/// A duration as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A bandwidth in bytes per second, as whole MiB/s (at least 1).
mod mib_per_s {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(b: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => s.serialize_u64(b >> 20),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<u64>::deserialize(d)? {
            None => Ok(None),
            Some(0) => Err(D::Error::custom("max_bandwidth_mib must be at least 1")),
            Some(mib) => mib
                .checked_mul(1 << 20)
                .map(Some)
                .ok_or_else(|| D::Error::custom("max_bandwidth_mib is too large")),
        }
    }
}

impl Default for DowntimeLimit {
    fn default() -> Self {
        DowntimeLimit {
            limit: Duration::from_millis(300),
            max_iterations: 30,
            max_time: Duration::from_secs(120),
            auto_converge: true,
            max_bandwidth: None,
            run_percent: 100,
        }
    }
}

impl Convergence for DowntimeLimit {
    fn decide(&mut self, e: &Estimate) -> Decision {
        let expected = e.expected_downtime();
        let last = e.iteration + 1 >= self.max_iterations || e.elapsed >= self.max_time;
        let shrinking = e
            .dirty_bytes
            .saturating_add(e.device_pending)
            .saturating_mul(2)
            <= e.sent;
        if expected <= self.limit && (expected <= SETTLED_DOWNTIME || !shrinking || last) {
            Decision::SwitchOver(SwitchReason::Converged)
        } else if expected <= self.limit {
            Decision::Iterate
        } else if e.all_mapped {
            Decision::SwitchOver(SwitchReason::AllMapped)
        } else if e.iteration + 1 >= self.max_iterations {
            Decision::GiveUp(Limit::Iterations(self.max_iterations))
        } else if e.elapsed >= self.max_time {
            Decision::GiveUp(Limit::Time(self.max_time))
        } else {
            Decision::Iterate
        }
    }

    fn throttle(&mut self, e: &Estimate, sent: u64) -> Option<u8> {
        let behind = e.iteration > 0
            && e.expected_downtime() > self.limit
            && e.dirty_bytes.saturating_mul(2) > sent;
        if self.auto_converge && behind {
            self.run_percent = match self.run_percent {
                100 => THROTTLE_FIRST,
                p => p.saturating_sub(THROTTLE_STEP).max(THROTTLE_FLOOR),
            };
        }
        (self.run_percent < 100).then_some(self.run_percent)
    }

    fn max_bandwidth(&self) -> Option<u64> {
        self.max_bandwidth
    }

    fn max_time(&self) -> Option<Duration> {
        Some(self.max_time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(dirty: u64, bandwidth: f64, iteration: u64) -> Estimate {
        Estimate {
            iteration,
            dirty_bytes: dirty,
            device_pending: 0,
            bandwidth,
            elapsed: Duration::ZERO,
            sent: 0,
            all_mapped: false,
        }
    }

    #[test]
    fn a_guest_dirtying_faster_than_the_link_is_throttled_step_by_step() {
        let mut p = DowntimeLimit::default();
        // 1 GB dirty at 100 MB/s after sending 100 MB: far behind.
        let behind = estimate(1_000_000_000, 1e8, 1);
        assert_eq!(p.throttle(&behind, 100_000_000), Some(THROTTLE_FIRST));
        assert_eq!(
            p.throttle(&behind, 100_000_000),
            Some(THROTTLE_FIRST - THROTTLE_STEP)
        );
    }

    #[test]
    fn the_throttle_never_goes_below_its_floor() {
        let mut p = DowntimeLimit::default();
        let behind = estimate(1_000_000_000, 1e8, 1);
        let last = (0..20).map(|_| p.throttle(&behind, 1)).last().flatten();
        assert_eq!(last, Some(THROTTLE_FLOOR));
    }

    #[test]
    fn the_first_iteration_never_throttles() {
        let mut p = DowntimeLimit::default();
        assert_eq!(p.throttle(&estimate(1_000_000_000, 1e8, 0), 1), None);
    }

    #[test]
    fn without_auto_converge_the_guest_is_never_throttled() {
        let mut p = DowntimeLimit {
            auto_converge: false,
            ..Default::default()
        };
        assert_eq!(p.throttle(&estimate(1_000_000_000, 1e8, 1), 1), None);
    }

    #[test]
    fn switches_over_when_the_rest_fits_the_limit() {
        let mut p = DowntimeLimit::default();
        // 100 MB at 1 GB/s: 100 ms.
        assert_eq!(
            p.decide(&estimate(100_000_000, 1e9, 0)),
            Decision::SwitchOver(SwitchReason::Converged)
        );
    }

    #[test]
    fn a_rest_that_fits_but_would_halve_gets_another_iteration() {
        let mut p = DowntimeLimit::default();
        // 17 MB left (17 ms at 1 GB/s) after sending 2 GB.
        let e = Estimate {
            sent: 2_000_000_000,
            ..estimate(17_000_000, 1e9, 0)
        };
        assert_eq!(p.decide(&e), Decision::Iterate);
    }

    #[test]
    fn a_rest_that_fits_and_no_longer_halves_switches_over() {
        let mut p = DowntimeLimit::default();
        let e = Estimate {
            sent: 20_000_000,
            ..estimate(17_000_000, 1e9, 3)
        };
        assert_eq!(p.decide(&e), Decision::SwitchOver(SwitchReason::Converged));
    }

    #[test]
    fn a_rest_within_the_settled_downtime_switches_over_at_once() {
        let mut p = DowntimeLimit::default();
        let e = Estimate {
            sent: 2_000_000_000,
            ..estimate(1_000_000, 1e9, 0)
        };
        assert_eq!(p.decide(&e), Decision::SwitchOver(SwitchReason::Converged));
    }

    #[test]
    fn a_rest_that_fits_at_the_last_iteration_switches_over_though_it_would_halve() {
        let mut p = DowntimeLimit {
            max_iterations: 2,
            ..Default::default()
        };
        let e = Estimate {
            sent: 2_000_000_000,
            ..estimate(17_000_000, 1e9, 1)
        };
        assert_eq!(p.decide(&e), Decision::SwitchOver(SwitchReason::Converged));
    }

    #[test]
    fn iterates_while_the_rest_does_not_fit() {
        let mut p = DowntimeLimit::default();
        assert_eq!(
            p.decide(&estimate(1_000_000_000, 1e9, 0)),
            Decision::Iterate
        );
    }

    #[test]
    fn device_pending_bytes_count_toward_the_estimate() {
        let mut p = DowntimeLimit::default();
        let e = Estimate {
            device_pending: 500_000_000,
            ..estimate(0, 1e9, 0)
        };
        assert_eq!(p.decide(&e), Decision::Iterate);
    }

    #[test]
    fn the_iteration_limit_without_convergence_gives_up() {
        let mut p = DowntimeLimit {
            max_iterations: 3,
            ..Default::default()
        };
        assert_eq!(
            p.decide(&estimate(u64::MAX / 2, 1.0, 2)),
            Decision::GiveUp(Limit::Iterations(3))
        );
    }

    #[test]
    fn the_time_limit_without_convergence_gives_up() {
        let mut p = DowntimeLimit {
            max_time: Duration::from_secs(1),
            ..Default::default()
        };
        let e = Estimate {
            elapsed: Duration::from_secs(2),
            ..estimate(u64::MAX / 2, 1.0, 0)
        };
        assert_eq!(
            p.decide(&e),
            Decision::GiveUp(Limit::Time(Duration::from_secs(1)))
        );
    }

    #[test]
    fn converging_at_the_last_iteration_still_switches_over() {
        let mut p = DowntimeLimit {
            max_iterations: 3,
            ..Default::default()
        };
        assert_eq!(
            p.decide(&estimate(0, 1e9, 2)),
            Decision::SwitchOver(SwitchReason::Converged)
        );
    }

    #[test]
    fn the_bandwidth_cap_is_whole_mib_per_second_on_the_wire() {
        let p: DowntimeLimit = serde_json::from_str(r#"{"max_bandwidth_mib": 3}"#).unwrap();
        assert_eq!(p.max_bandwidth(), Some(3 << 20));
        assert_eq!(serde_json::to_value(p).unwrap()["max_bandwidth_mib"], 3);
    }

    #[test]
    fn a_bandwidth_cap_of_zero_is_refused() {
        let r = serde_json::from_str::<DowntimeLimit>(r#"{"max_bandwidth_mib": 0}"#);
        assert!(r.unwrap_err().to_string().contains("at least 1"));
    }

    #[test]
    fn an_all_mapped_device_ends_pre_copy_at_once() {
        let mut p = DowntimeLimit::default();
        let e = Estimate {
            all_mapped: true,
            ..estimate(1 << 40, 1e9, 0)
        };
        assert_eq!(p.decide(&e), Decision::SwitchOver(SwitchReason::AllMapped));
    }

    #[test]
    fn fields_left_out_of_the_wire_form_take_the_defaults() {
        let p: DowntimeLimit = serde_json::from_str(r#"{"max_iterations": 5}"#).unwrap();
        assert_eq!(
            p,
            DowntimeLimit {
                max_iterations: 5,
                ..Default::default()
            }
        );
    }

    #[test]
    fn the_wire_form_is_in_milliseconds() {
        let p = DowntimeLimit {
            limit: Duration::from_millis(250),
            max_iterations: 7,
            max_time: Duration::from_secs(9),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(p).unwrap(),
            serde_json::json!({"downtime_ms": 250, "max_iterations": 7, "max_time_ms": 9000,
                "auto_converge": true})
        );
    }

    #[test]
    fn no_bandwidth_measured_means_no_convergence() {
        assert_eq!(estimate(1, 0.0, 0).expected_downtime(), Duration::MAX);
    }
}
