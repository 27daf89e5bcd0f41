//! Connecting to NATS with the URL forms `--nats-url` documents.

use interop_test_support::{free_port, NatsCluster, NatsServer};

#[tokio::test]
async fn a_server_list_connects_even_when_the_first_server_is_down() {
    // Regression: a comma-separated --nats-url was parsed as one URL and
    // every service exited with "invalid port number".
    let nats = NatsServer::start();
    let url = format!("nats://127.0.0.1:{},{}", free_port(), nats.url());
    let client = interop_bus::connect(&url, "test").await.unwrap();
    client.flush().await.unwrap();
}

#[tokio::test]
async fn connect_waits_for_a_server_that_is_not_there_yet() {
    // Regression: connect gave up waiting after 30 s and the service exited
    // soon after; now an unreachable NATS only delays the caller.
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let connecting = tokio::spawn(async move { interop_bus::connect(&url, "test").await });
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(!connecting.is_finished(), "connect returned with no server");
    let _nats = NatsServer::start_on(port);
    let client = tokio::time::timeout(std::time::Duration::from_secs(30), connecting)
        .await
        .expect("connected soon after the server started")
        .unwrap()
        .unwrap();
    client.flush().await.unwrap();
}

#[tokio::test]
async fn a_malformed_url_fails_at_once() {
    let e = interop_bus::connect("nats://127.0.0.1:notaport", "test")
        .await
        .unwrap_err();
    assert!(matches!(e, interop_bus::BusError::Connect { .. }), "{e}");
}

#[tokio::test]
async fn a_cluster_url_list_connects() {
    let cluster = NatsCluster::start(3);
    let client = interop_bus::connect(&cluster.urls(), "test").await.unwrap();
    client.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_starting_together_create_replicated_streams() {
    // Regression: on a fresh 3-node cluster, two services creating the
    // same R3 streams at once both got no answer and exited.
    let cluster = NatsCluster::start(3);
    let settings = interop_bus::streams::StreamSettings {
        replicas: 3,
        ..Default::default()
    };
    let starts = (0..3).map(|i| {
        let (urls, settings) = (cluster.urls(), settings.clone());
        tokio::spawn(async move {
            let client = interop_bus::connect(&urls, &format!("svc-{i}")).await?;
            let js = async_nats::jetstream::new(client);
            interop_bus::streams::ensure_streams(&js, &settings).await
        })
    });
    for start in starts.collect::<Vec<_>>() {
        start.await.unwrap().unwrap();
    }
}
