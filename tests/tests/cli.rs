//! injectctl drives the daemon the way a person would.

use std::process::{Command, Output};

use injectord_tests::*;
use serde_json::Value;

fn ctl(d: &Daemon, args: &[&str]) -> Output {
    let bin = daemon_binary().with_file_name("injectctl");
    Command::new(&bin)
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn inject_list_get_remove_from_flags_and_files() {
    let d = Daemon::start();
    let cg = TestCgroup::new("cli");
    let out = ctl(
        &d,
        &[
            "inject",
            "--name",
            "cli-a",
            "--cgroup",
            &cg.rel,
            "--errno",
            "EPERM",
            "--port",
            "7",
            "--every-nth",
            "2",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("cli-a"));
    let r = cg.connects("udp", "127.0.0.1", 7, 4);
    assert_eq!(r.pattern, ".X.X");

    let spec = std::env::temp_dir()
        .join(unique("spec"))
        .with_extension("json");
    std::fs::write(
        &spec,
        format!(r#"{{"name": "cli-b", "target": {{"cgroup": "{}"}}, "fault": {{"type": "connect_error", "errno": 111, "port": 8}}}}"#, cg.rel),
    )
    .unwrap();
    let out = ctl(&d, &["inject", "-f", spec.to_str().unwrap()]);
    let _ = std::fs::remove_file(&spec);
    assert!(out.status.success(), "{out:?}");

    let list = stdout(&ctl(&d, &["list"]));
    assert!(
        list.contains("NAME") && list.contains("cli-a") && list.contains("cli-b"),
        "{list}"
    );
    let json: Value = serde_json::from_slice(&ctl(&d, &["list", "--json"]).stdout).unwrap();
    assert_eq!(json["faults"].as_array().unwrap().len(), 2);
    let get = stdout(&ctl(&d, &["get", "cli-a"]));
    assert!(get.contains("activations  2"), "{get}");

    assert!(ctl(&d, &["remove", "cli-a"]).status.success());
    assert_eq!(cg.connects("udp", "127.0.0.1", 7, 2).ok, 2);
    let caps = stdout(&ctl(&d, &["capabilities"]));
    assert!(caps.contains("bpf_set_retval"), "{caps}");
    assert!(stdout(&ctl(&d, &["clear"])).contains("removed 1"));
}

#[test]
fn errors_exit_2_with_the_code() {
    let d = Daemon::start();
    let cg = TestCgroup::new("cli-err");
    let out = ctl(&d, &["inject", "--cgroup", &cg.rel, "--errno", "ENOPE"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown_errno"), "{err}");
    let out = ctl(&d, &["get", "nothing-here"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
}
