//! A progress display on stderr: on a terminal, one line rewritten in
//! place (run, phase, time left, samples and failures so far); elsewhere
//! (a log, CI) one line per phase.

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

use crate::{
    kpi::Sample,
    report::RunReport,
    run::{Phase, Progress, RunLabel},
};

pub struct Terminal {
    tty: bool,
    line: String,
    phase_end: Instant,
    samples: usize,
    failed: usize,
    last_draw: Instant,
}

impl Default for Terminal {
    fn default() -> Self {
        Self::new()
    }
}

impl Terminal {
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            line: String::new(),
            phase_end: Instant::now(),
            samples: 0,
            failed: 0,
            last_draw: Instant::now(),
        }
    }

    fn draw(&mut self) {
        if !self.tty {
            return;
        }
        let left = self.phase_end.saturating_duration_since(Instant::now());
        let _ = write!(
            std::io::stderr(),
            "\r\x1b[K{} {:>5.1}s left, {} samples, {} failed",
            self.line,
            left.as_secs_f64(),
            self.samples,
            self.failed
        );
        self.last_draw = Instant::now();
    }

    /// Ends the line in place, before the table is printed.
    pub fn clear(&mut self) {
        if self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

impl Progress for Terminal {
    fn phase(&mut self, run: &RunLabel, phase: Phase, length: Duration) {
        self.line = format!(
            "run {}/{} [{}] rep {}/{}: {:<8}",
            run.index,
            run.planned,
            run.faults.join("+"),
            run.repetition,
            run.repeat,
            phase.as_str()
        );
        self.phase_end = Instant::now() + length;
        if self.tty {
            self.draw();
        } else {
            eprintln!("{} ({:.1}s)", self.line, length.as_secs_f64());
        }
    }

    fn sample(&mut self, _probe: &str, sample: &Sample) {
        self.samples += 1;
        if !sample.ok {
            self.failed += 1;
        }
        if self.last_draw.elapsed() > Duration::from_millis(100) {
            self.draw();
        }
    }

    fn finished(&mut self, run: &RunReport) {
        self.clear();
        let avail = run
            .kpis
            .availability
            .map_or_else(|| "-".into(), |a| format!("{a:.3}"));
        eprintln!(
            "run {} [{}]: {} (availability {avail})",
            run.index,
            run.faults.join("+"),
            run.verdict.as_str()
        );
    }
}
