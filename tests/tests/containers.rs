//! Container ids resolve in cgroup trees laid out the way docker,
//! containerd under Kubernetes, cri-o and podman lay them out.

use injectord_tests::*;
use serde_json::json;

/// A 64-hex-digit id that starts with `prefix` and is unique to this run.
fn container_id(prefix: &str) -> String {
    let seed = format!("{:08x}{:08x}", std::process::id(), rand32());
    let mut id = format!("{prefix}{seed}");
    while id.len() < 64 {
        id.push_str(&format!("{:08x}", rand32()));
    }
    id.truncate(64);
    id
}

fn rand32() -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("/dev/urandom");
    u32::from_ne_bytes(b)
}

#[test]
fn container_ids_resolve_in_every_runtime_layout() {
    let d = Daemon::start_without_interface_pool();
    let root = TestCgroup::new("runtimes");
    let pod = "pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901";
    // "ID" stands for the container id.
    let layouts = [
        (
            "docker (systemd driver)",
            "system.slice/docker-ID.scope".to_string(),
        ),
        ("docker (cgroupfs driver)", "docker/ID".to_string()),
        (
            "containerd under Kubernetes",
            format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-{pod}.slice/cri-containerd-ID.scope"
            ),
        ),
        (
            "cri-o under Kubernetes",
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-{pod}.slice/crio-ID.scope"
            ),
        ),
        (
            "containerd (cgroupfs driver)",
            format!("kubepods/besteffort/{pod}/ID"),
        ),
        ("podman", "machine.slice/libpod-ID.scope".to_string()),
    ];
    for (runtime, layout) in layouts {
        let id = container_id("");
        let cg = root.child(&layout.replace("ID", &id));
        // A conmon scope next to it must not count as the container.
        let _conmon = root.child(&layout.replace("ID", &format!("conmon-{id}")));
        let r = d
            .call(
                "inject",
                json!({"name": format!("c-{}", &id[..12]), "target": {"container": &id[..12]},
                    "fault": {"type": "connect_error", "errno": "ECONNREFUSED"}}),
            )
            .unwrap_or_else(|e| panic!("{runtime}: {e:#}"));
        let got = d.call("get", json!({"id": r["id"]})).unwrap();
        assert_eq!(got["cgroup"]["path"], format!("/{}", cg.rel), "{runtime}");
        assert_eq!(
            cg.connects("udp", "127.0.0.1", 9, 1).failed("ECONNREFUSED"),
            1,
            "{runtime}"
        );
        // the full id works too
        assert_eq!(
            d.error_code(
                "inject",
                json!({"target": {"container": id}, "fault": {"type": "connect_error", "errno": 1}}),
            ),
            "conflict",
            "{runtime}: the full id should resolve to the same cgroup"
        );
    }
}

#[test]
fn ambiguous_prefix_lists_the_candidates() {
    let d = Daemon::start_without_interface_pool();
    let root = TestCgroup::new("ambiguous");
    let shared = container_id("");
    let a = format!("{}{}", &shared[..12], &container_id("")[12..]);
    let b = format!("{}{}", &shared[..12], &container_id("")[12..]);
    let _ca = root.child(&format!("system.slice/docker-{a}.scope"));
    let _cb = root.child(&format!("machine.slice/libpod-{b}.scope"));
    let err = d
        .call(
            "inject",
            json!({"target": {"container": &shared[..12]}, "fault": {"type": "connect_error", "errno": 1}}),
        )
        .unwrap_err();
    let err = err.downcast_ref::<ErrorResponse>().unwrap();
    assert_eq!(err.code, "ambiguous_target");
    assert!(
        err.message.contains(&a) && err.message.contains(&b),
        "{}",
        err.message
    );
    let candidates = err.data["details"]["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 2);
    // a longer prefix disambiguates
    d.inject(
        json!({"target": {"container": &a[..20]}, "fault": {"type": "connect_error", "errno": 1}}),
    );
    // too short a prefix is refused as invalid
    assert_eq!(
        d.error_code(
            "inject",
            json!({"target": {"container": &a[..8]}, "fault": {"type": "connect_error", "errno": 1}}),
        ),
        "invalid_value"
    );
}
