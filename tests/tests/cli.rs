//! injectctl drives the daemon the way a person would.

use std::process::{Command, Output};

use injectord_tests::{net::Netns, *};
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
    for target in ["cgroup", "pid", "container", "pod", "vm", "interface"] {
        assert!(
            caps.lines().any(|l| l.starts_with(&format!("{target} "))),
            "target {target} missing from:\n{caps}"
        );
    }
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
    // --pod and --vm reach the daemon as pod and vm targets.
    for (flag, value, field) in [
        (
            "--pod",
            "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",
            "target.pod",
        ),
        ("--vm", "no-such-domain", "target.vm"),
    ] {
        let out = ctl(&d, &["inject", flag, value, "--errno", "EPERM"]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("target_not_found") && err.contains(field) && err.contains(value),
            "{err}"
        );
    }
}

/// Every fault type's fields are flags, derived from the daemon's spec
/// types; `--json` prints the daemon's answer for any command.
#[test]
fn packet_faults_from_flags_and_json_everywhere() {
    let d = Daemon::start();
    let ns = Netns::new("cli-pkt");
    let help = stdout(&ctl(&d, &["inject", "--help"]));
    for flag in [
        "--errno",
        "--dst-port",
        "--fix-checksum",
        "--install-fq",
        "--max-delay",
        "--jitter",
        "--interface",
        "--netns",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let out = ctl(
        &d,
        &[
            "--json",
            "inject",
            "--name",
            "cli-p",
            "--interface",
            "lo",
            "--netns",
            &ns.name,
            "--type",
            "packet-corrupt",
            "--protocol",
            "udp",
            "--dst-port",
            "9",
            "--offset",
            "3",
            "--fix-checksum",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let injected: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(injected["name"], "cli-p");
    let got: Value = serde_json::from_slice(&ctl(&d, &["--json", "get", "cli-p"]).stdout).unwrap();
    let fault = &got["spec"]["fault"];
    assert_eq!(fault["type"], "packet_corrupt", "{got}");
    assert_eq!(fault["protocol"], "udp");
    assert_eq!(fault["dst_port"], 9);
    assert_eq!(fault["offset"], 3);
    assert_eq!(fault["fix_checksum"], true);
    assert_eq!(got["spec"]["target"]["netns"], ns.name.as_str());
    // A bad value is the daemon's to refuse, with the field's path.
    let out = ctl(
        &d,
        &[
            "inject",
            "--interface",
            "lo",
            "--netns",
            &ns.name,
            "--type",
            "packet-drop",
            "--protocol",
            "carrier-pigeon",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid_value") && err.contains("fault.protocol"),
        "{err}"
    );
    for cmd in [
        &["status"][..],
        &["capabilities"],
        &["list"],
        &["remove", "cli-p"],
        &["clear"],
    ] {
        let out = ctl(&d, &[&["--json"][..], cmd].concat());
        assert!(out.status.success(), "{cmd:?}: {out:?}");
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("{cmd:?} --json: {e}: {}", stdout(&out)));
    }
}
