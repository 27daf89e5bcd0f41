//! `spam-scoring train` and `spam-scoring eval`, run as a user would.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_spam-scoring");

fn corpus(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("small.tsv");
    let mut text = String::new();
    for i in 0..40 {
        text.push_str(&format!(
            "spam\tWIN a FREE prize {i}! Call 0906170{i:04} now to claim your cash reward\n"
        ));
        text.push_str(&format!(
            "ham\tsee you at the station at {i} o'clock, bring the umbrella\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn eval_prints_one_json_object_with_the_metrics() {
    let dir = std::env::temp_dir().join(format!("spam-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corpus = corpus(&dir);
    // The built-in model.
    let m = json(
        &Command::new(BIN)
            .args(["eval", "--corpus"])
            .arg(&corpus)
            .output()
            .unwrap(),
    );
    for key in ["precision", "recall", "fpr", "accuracy", "n", "msgs_per_s"] {
        assert!(m.get(key).is_some(), "{key} missing in {m}");
    }
    assert_eq!(m["n"], 80);
    assert!(m["recall"].as_f64().unwrap() > 0.9, "{m}");
    // Train a model, then evaluate it; and cross-validation.
    let model = dir.join("m.model");
    let report = json(
        &Command::new(BIN)
            .args(["train", "--corpus"])
            .arg(&corpus)
            .arg("--out")
            .arg(&model)
            .output()
            .unwrap(),
    );
    assert_eq!(report["examples"], 80);
    let m = json(
        &Command::new(BIN)
            .arg("--model")
            .arg(&model)
            .args(["eval", "--corpus"])
            .arg(&corpus)
            .output()
            .unwrap(),
    );
    assert_eq!(m["n"], 80);
    let cv = json(
        &Command::new(BIN)
            .args(["eval", "--cv", "5", "--corpus"])
            .arg(&corpus)
            .output()
            .unwrap(),
    );
    assert_eq!(cv["n"], 80);
    // Bad input is a clear error, not a panic.
    std::fs::write(dir.join("bad.tsv"), "maybe\tsomething\n").unwrap();
    let out = Command::new(BIN)
        .args(["eval", "--corpus"])
        .arg(dir.join("bad.tsv"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_policy_file_refuses_to_start_with_exit_64() {
    let dir = std::env::temp_dir().join(format!("spam-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text, says) in [
        ("typo.toml", "[verdict]\nrequets = 2.0\n", "requets"),
        (
            "order.toml",
            "[verdict]\nrequest = 8.0\nquarantine = 6.0\n",
            "request <= quarantine",
        ),
        (
            "halflife.toml",
            "[sender_reputation]\nhalf_life_days = 30.0\n",
            "half_life_days",
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .arg("--policy")
            .arg(&path)
            // Never reached: the policy is checked before connecting.
            .args(["--nats-url", "nats://127.0.0.1:1"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(stderr.contains(says), "{name}: {stderr}");
    }
    let out = Command::new(BIN)
        .arg("--policy")
        .arg(dir.join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    std::fs::remove_dir_all(&dir).unwrap();
}
