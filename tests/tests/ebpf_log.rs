//! The eBPF side's log records (aya-log) reach user space: a connect
//! program attached to a cgroup whose target was never published runs in
//! the one state it logs, and the record arrives with its level and text.
//! (The daemon publishes right after attaching, so only this test, holding
//! the attachment itself, can keep a program in that state.)

use std::{
    fs::File,
    sync::{Arc, Mutex},
};

use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use injector_common::connect::CONNECT4;
use injectord_tests::*;

/// Collects the records aya-log hands to the `log` facade.
#[derive(Clone, Default)]
struct Records(Arc<Mutex<Vec<(log::Level, String, String)>>>);

impl log::Log for Records {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((r.level(), r.target().to_string(), r.args().to_string()));
    }

    fn flush(&self) {}
}

#[test]
fn a_connect_program_logs_when_its_target_is_unpublished() {
    let mut ebpf = aya::Ebpf::load(injectord::kernel::OBJECT).unwrap();
    let records = Records::default();
    let mut logger = aya_log::EbpfLogger::init_with_logger(&mut ebpf, records.clone()).unwrap();
    let prog: &mut CgroupSockAddr = ebpf.program_mut(CONNECT4).unwrap().try_into().unwrap();
    prog.load().unwrap();
    let cg = TestCgroup::new("ebpf-log");
    let link = prog
        .attach(File::open(&cg.path).unwrap(), CgroupAttachMode::Single)
        .unwrap();
    let r = cg.connects("udp", "127.0.0.1", 9, 2);
    assert_eq!(r.ok, 2, "an unpublished attachment never refuses: {r:?}");
    logger.flush();
    let got = records.0.lock().unwrap().clone();
    assert!(
        got.iter()
            .any(|(level, target, text)| *level == log::Level::Debug
                && target.starts_with(injectord::kernel::logs::TARGET)
                && text.contains("before its target is published")),
        "{got:?}"
    );
    prog.detach(link).unwrap();
}
