//! Key transparency's audit across many epochs (issue 21: "audit across
//! 1,000 epochs succeeds; proof sizes and times recorded"), through the
//! whole path: key-directory writes, epochs published with their roots and
//! append-only proofs, and `interop_transparency::audit` reading them back
//! from a nats-server of its own.
//!
//! ```sh
//! cargo run --release -p interop-transparency --example kt_audit_bench [epochs] [users per epoch]
//! ```

use std::time::Instant;

use interop_keys::KeyDirectory;
use interop_proto::keys::SIGNATURE_BYTES;
use interop_proto::v1::{DeviceKeys, PublicKey, PublishKeys};
use interop_test_support::NatsServer;
use interop_transparency::{audit, Transparency, VrfKey};

fn key(fill: u8, id: u32) -> PublicKey {
    PublicKey {
        algorithm: "curve25519".into(),
        key_id: id,
        key: {
            let mut k = vec![fill; 32];
            k[..4].copy_from_slice(&id.to_be_bytes());
            k.into()
        },
        signature: Default::default(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let epochs: u32 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1_000);
    let per_epoch: u32 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10);
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    interop_bus::ensure_streams(&js, &interop_bus::StreamSettings::default())
        .await
        .unwrap();
    let keys = KeyDirectory::open(js.clone()).await.unwrap();
    let kt = Transparency::open(js.clone(), VrfKey::from_bytes([7; 32]))
        .await
        .unwrap();
    let started = Instant::now();
    for e in 0..epochs {
        for u in 0..per_epoch {
            let user = format!("home:+49151{u:08}");
            let p = PublishKeys {
                user: user.clone(),
                device: Some(DeviceKeys {
                    device_id: "phone".into(),
                    // A new identity key each epoch: every user changes.
                    identity_key: Some(key(1, e)),
                    signing_key: None,
                    signed_prekey: Some(PublicKey {
                        signature: vec![9; SIGNATURE_BYTES].into(),
                        ..key(2, 0)
                    }),
                    last_resort_prekey: Some(key(3, 0)),
                    pq_last_resort_prekey: None,
                    last_resort_key_package: vec![7; 100].into(),
                }),
                one_time_prekeys: vec![],
                key_packages: vec![],
            };
            keys.publish(&user, &p).await.unwrap();
        }
        kt.publish_epoch().await.unwrap().expect("an epoch");
    }
    let published = started.elapsed();
    let t = Instant::now();
    let report = audit(&js, 1, u64::from(epochs)).await.unwrap();
    let audited = t.elapsed();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.verified.len() as u32, epochs - 1);
    println!(
        "{epochs} epochs of {per_epoch} key changes published in {:.1} s ({:.1} ms an epoch with its root and proof)",
        published.as_secs_f64(),
        published.as_secs_f64() * 1000.0 / f64::from(epochs)
    );
    println!(
        "audit 1→{epochs}: {} steps verified in {:.2} s ({:.2} ms a step), {} bytes of proofs ({} a step)",
        report.verified.len(),
        audited.as_secs_f64(),
        audited.as_secs_f64() * 1000.0 / report.verified.len() as f64,
        report.proof_bytes,
        report.proof_bytes / report.verified.len()
    );
}
