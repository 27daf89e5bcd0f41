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
async fn a_cluster_url_list_connects() {
    let cluster = NatsCluster::start(3);
    let client = interop_bus::connect(&cluster.urls(), "test").await.unwrap();
    client.flush().await.unwrap();
}
