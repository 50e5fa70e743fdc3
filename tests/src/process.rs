//! Watching the processes a fault acts on: their state, and waiting for
//! it to change.

use std::time::{Duration, Instant};

/// A process's state letter (`T` stopped, `S` sleeping...), or `None`
/// once it is gone.
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Polls `done` every 2 ms until it holds; fails the test naming `what`
/// after `limit`. Returns how long it took (to within the poll), which
/// tests hold against the time a stop or a pause should take.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    start.elapsed()
}
