//! `scripts/down` stops only what `scripts/up` started: a pid file whose
//! process is now another program (the pid was reused) is left alone;
//! replicas (`routing-2`) are stopped like the first. `scripts/up
//! --replicas` refuses what it cannot run before it builds anything.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Starts `sleep 60` under the program name `argv0`, detached from this
/// process (so the system reaps it when it ends); its pid.
fn detached_sleep(argv0: &str) -> u32 {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "bash -c 'exec -a \"{argv0}\" sleep 60' >/dev/null 2>&1 & echo $!"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn down_stops_its_own_processes_and_leaves_a_reused_pid_alone() {
    let run = tempfile::tempdir().unwrap();
    std::fs::create_dir(run.path().join("pids")).unwrap();
    let nats = detached_sleep("nats-server");
    // Redis rewrites its argv[0] to its listening address.
    let redis = detached_sleep("redis-server *:6379");
    let stranger = detached_sleep("some-editor");
    std::fs::write(run.path().join("pids/nats.pid"), nats.to_string()).unwrap();
    std::fs::write(run.path().join("pids/redis.pid"), redis.to_string()).unwrap();
    // The ingest pid file names a process that is not ingest.
    std::fs::write(run.path().join("pids/ingest.pid"), stranger.to_string()).unwrap();
    // A second routing replica (scripts/up --replicas routing=2).
    let routing2 = detached_sleep("/opt/interop/routing");
    std::fs::write(run.path().join("pids/routing-2.pid"), routing2.to_string()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts/down"))
        .env("INTEROP_RUN_DIR", run.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while (alive(nats) || alive(redis) || alive(routing2)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(routing2), "scripts/down did not stop a replica");
    assert!(!run.path().join("pids/routing-2.pid").exists());
    assert!(!alive(nats), "scripts/down did not stop its nats-server");
    assert!(!alive(redis), "scripts/down did not stop its redis-server");
    assert!(
        alive(stranger),
        "scripts/down killed a process it did not start"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("stale pid file"));
    assert!(!run.path().join("pids/ingest.pid").exists());
    Command::new("kill")
        .arg(stranger.to_string())
        .status()
        .unwrap();
}

#[test]
fn up_refuses_replicas_it_cannot_run_before_building() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for bad in [
        "bogus=2",
        "routing=9",
        "routing=0",
        "routing",
        "routing=2,delivery=x",
    ] {
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(root.join("scripts/up"))
            .args(["--replicas", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--replicas takes"), "{bad}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{bad}: it built first"
        );
    }
}
