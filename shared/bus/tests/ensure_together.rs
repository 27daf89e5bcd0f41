//! Services starting together on a new nats-server each create every
//! stream at once. nats-server 2.9.10 crashed when an update reached a
//! stream another client was creating at that moment (async-nats's
//! `create_or_update_stream` updates first); `ensure_streams` creates first.

use futures_util::StreamExt as _;
use interop_bus::{ensure_streams, StreamSettings};
use interop_test_support::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_creating_the_streams_together_leave_the_server_up() {
    for _ in 0..5 {
        let nats = NatsServer::start();
        let mut starting = Vec::new();
        for _ in 0..40 {
            let url = nats.url();
            starting.push(tokio::spawn(async move {
                let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
                ensure_streams(&js, &StreamSettings::default()).await
            }));
        }
        // A crashed server never answers: the creations retry for ever.
        let all = futures_util::future::join_all(starting);
        let done = tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .unwrap_or_else(|_| {
                let stderr =
                    std::fs::read_to_string(nats.dir().join("stderr.log")).unwrap_or_default();
                panic!("the server stopped answering; its stderr:\n{stderr}")
            });
        for d in done {
            d.unwrap().unwrap();
        }
        // Still the same server, answering.
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let names: Vec<String> = js
            .stream_names()
            .filter_map(|n| async move { n.ok() })
            .collect()
            .await;
        assert!(names.len() >= 10, "{names:?}");
    }
}
