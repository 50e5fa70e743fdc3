//! Do-nothing programs the daemon loads at start-up to learn, by trying,
//! which hook types this kernel offers.

pub const PROBE_LSM: &str = "probe_lsm";
pub const PROBE_KPROBE: &str = "probe_kprobe";
pub const PROBE_RAW_TP: &str = "probe_raw_tp";
pub const PROBE_XDP: &str = "probe_xdp";
pub const PROBE_TC: &str = "probe_tc";
pub const PROGRAMS: &[&str] = &[PROBE_LSM, PROBE_KPROBE, PROBE_RAW_TP, PROBE_XDP, PROBE_TC];
