//! The numbers of a migration, as a table for people and as JSON for programs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One pre-copy iteration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IterationStats {
    /// Iteration number, from 0.
    pub number: u64,
    /// Dirty guest pages found for it.
    pub dirty_pages: u64,
    /// Stream bytes of its RAM.
    pub ram_bytes: u64,
    /// Stream bytes of device data.
    pub device_bytes: u64,
    /// How long it took, in ms.
    pub duration_ms: f64,
    /// The share of time the vCPUs could run during it, in percent (100: not throttled).
    #[serde(default = "full_speed")]
    pub run_percent: u8,
}

fn full_speed() -> u8 {
    100
}

/// Where the downtime went, phase by phase, in ms: from pausing the guest here to the
/// destination's confirmation that it runs there. The phases follow each other, so they add
/// up to the downtime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DowntimeStats {
    /// Pausing the guest: every vCPU out of KVM_RUN, the synthetic guest's work drained.
    pub pause_ms: f64,
    /// Devices to STOP_COPY.
    pub devices_stop_ms: f64,
    /// The last sync: KVM's dirty log, the VMM's, every device's bitmap.
    pub sync_ms: f64,
    /// The last dirty RAM onto the stream.
    pub ram_ms: f64,
    /// The devices' stop-and-copy data, STOP, dirty tracking off.
    pub device_state_ms: f64,
    /// Saving the KVM state: every vCPU's registers, MSRs, LAPIC, ...; the irqchip, the clock.
    pub vcpu_state_ms: f64,
    /// The KVM state, the device configurations and the stream's end written and flushed.
    pub stream_end_ms: f64,
    /// Waiting for the destination to apply the rest of the stream, restore the KVM state and
    /// resume its devices (its READY).
    pub destination_ms: f64,
    /// The go and the destination's confirmation that the guest runs there.
    pub go_ms: f64,
}

/// A completed migration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationStats {
    /// From the start of setup to the destination's confirmation, in ms.
    pub total_ms: f64,
    /// Setup (connect, config, dirty tracking on, devices to pre-copy), in ms.
    pub setup_ms: f64,
    /// From pausing the guest here until it was ready to run on the destination, in ms.
    pub downtime_ms: f64,
    /// The downtime the convergence estimate expected, in ms.
    pub expected_downtime_ms: f64,
    /// Where the downtime went.
    #[serde(default)]
    pub downtime: DowntimeStats,
    /// The pre-copy iterations.
    pub iterations: Vec<IterationStats>,
    /// Why pre-copy ended.
    pub switchover: String,
    /// Guest pages sent, data and zero.
    pub pages: u64,
    /// Of those, pages sent as zero (no data).
    pub zero_pages: u64,
    /// Stream bytes of RAM.
    pub ram_bytes: u64,
    /// Bytes of device migration data.
    pub device_bytes: u64,
    /// All stream bytes.
    pub total_bytes: u64,
    /// Average throughput, MB/s (10^6 bytes).
    pub throughput_mbps: f64,
    /// Devices that report every mapped page dirty (no precise tracking): each sync sent all
    /// guest RAM for them.
    pub all_mapped_devices: Vec<String>,
    /// Devices without dirty tracking (no migration capability, or DIRTY_PAGES refused):
    /// every sync counted all guest RAM, which they have mapped, as dirty.
    #[serde(default)]
    pub untracked_devices: Vec<String>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

impl fmt::Display for MigrationStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "migration completed")?;
        writeln!(f, "  total time        {:>10.1} ms", self.total_ms)?;
        writeln!(f, "  setup             {:>10.1} ms", self.setup_ms)?;
        writeln!(
            f,
            "  downtime          {:>10.1} ms (expected {:.1} ms)",
            self.downtime_ms, self.expected_downtime_ms
        )?;
        let d = &self.downtime;
        writeln!(
            f,
            "    pause {:.1}, devices stop {:.1}, sync {:.1}, RAM {:.1}, device state {:.1}, \
             vCPU state {:.1}, stream end {:.1}, destination {:.1}, go {:.1} ms",
            d.pause_ms,
            d.devices_stop_ms,
            d.sync_ms,
            d.ram_ms,
            d.device_state_ms,
            d.vcpu_state_ms,
            d.stream_end_ms,
            d.destination_ms,
            d.go_ms
        )?;
        writeln!(f, "  switch-over       {:>10}", self.switchover)?;
        writeln!(
            f,
            "  RAM               {:>10.1} MiB ({} pages, {} zero)",
            mib(self.ram_bytes),
            self.pages,
            self.zero_pages
        )?;
        writeln!(
            f,
            "  device data       {:>10.1} MiB",
            mib(self.device_bytes)
        )?;
        writeln!(f, "  stream            {:>10.1} MiB", mib(self.total_bytes))?;
        writeln!(f, "  throughput        {:>10.1} MB/s", self.throughput_mbps)?;
        if !self.all_mapped_devices.is_empty() {
            writeln!(
                f,
                "  all-mapped scope  {} (every sync counts all their mapped pages dirty)",
                self.all_mapped_devices.join(", ")
            )?;
        }
        if !self.untracked_devices.is_empty() {
            writeln!(
                f,
                "  untracked         {} (no dirty tracking: every sync counts all RAM dirty)",
                self.untracked_devices.join(", ")
            )?;
        }
        writeln!(
            f,
            "  iter  dirty pages     RAM MiB  device MiB   time ms  vCPU run %"
        )?;
        for it in &self.iterations {
            writeln!(
                f,
                "  {:>4}  {:>11}  {:>10.1}  {:>10.2}  {:>8.1}  {:>10}",
                it.number,
                it.dirty_pages,
                mib(it.ram_bytes),
                mib(it.device_bytes),
                it.duration_ms,
                it.run_percent
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_round_trip_through_json() {
        let s = MigrationStats {
            total_ms: 1.5,
            iterations: vec![IterationStats {
                number: 0,
                dirty_pages: 3,
                ..Default::default()
            }],
            all_mapped_devices: vec!["gpu0".into()],
            ..Default::default()
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<MigrationStats>(&json).unwrap(), s);
    }

    #[test]
    fn the_table_names_untracked_devices() {
        let s = MigrationStats {
            untracked_devices: vec!["socket0".into()],
            ..Default::default()
        };
        assert!(s.to_string().contains("untracked         socket0"));
    }

    #[test]
    fn the_table_names_all_mapped_devices() {
        let s = MigrationStats {
            all_mapped_devices: vec!["gpu0".into()],
            ..Default::default()
        };
        assert!(s.to_string().contains("gpu0"));
    }
}
