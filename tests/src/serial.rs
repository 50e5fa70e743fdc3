//! Tests that must not overlap: an `flock` held for a whole test, so the
//! tests that take the same lock run one at a time, also when the harness
//! runs tests in parallel (as the VM suite does) and across test binaries.

use std::{fs::File, os::fd::AsRawFd as _};

/// Waits for and takes the lock `name` (a file in the temporary
/// directory); it is held until the returned file is dropped.
pub fn serial(name: &str) -> File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(std::env::temp_dir().join(format!("injectord-tests-{name}.lock")))
        .expect("lock file");
    // SAFETY: flock on a descriptor we own; released when it is closed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    f
}
