//! The chaos proxy and the NATS cluster, against the real servers.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use interop_test_support::{ChaosProxy, Mode, NatsCluster, RedisServer};

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends PING and reads `+PONG\r\n`.
fn ping(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf)?;
    assert_eq!(&buf, b"+PONG\r\n");
    Ok(())
}

#[test]
fn the_proxy_passes_delays_blackholes_and_cuts() {
    let redis = RedisServer::start();
    let proxy = ChaosProxy::start(redis.port());
    assert_eq!(proxy.upstream().port(), redis.port());
    let mut s = connect(proxy.port());
    ping(&mut s).unwrap();
    assert_eq!(proxy.connections_accepted(), 1);

    // Delay: each direction waits at least the delay.
    proxy.set_mode(Mode::Delay(Duration::from_millis(150)));
    let t = Instant::now();
    ping(&mut s).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );

    // Blackhole: nothing comes back while it lasts; the bytes wait and
    // arrive once traffic passes again (the stream is intact).
    proxy.set_mode(Mode::Blackhole);
    s.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    let err = s.read_exact(&mut buf).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err:?}"
    );
    // A new connection is accepted but gets nothing either.
    let mut fresh = connect(proxy.port());
    fresh
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    fresh.write_all(b"PING\r\n").unwrap();
    assert!(fresh.read_exact(&mut buf).is_err());
    proxy.set_mode(Mode::Pass);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");
    fresh
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    fresh.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");

    // Cut: open connections close, new ones are closed at once.
    proxy.set_mode(Mode::Cut);
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0, "closed");
    let mut again = connect(proxy.port());
    assert!(ping(&mut again).is_err(), "a new connection is cut too");
    // Healed: new connections work.
    proxy.set_mode(Mode::Pass);
    assert_eq!(proxy.mode(), Mode::Pass);
    let mut healed = connect(proxy.port());
    ping(&mut healed).unwrap();
}

#[test]
fn a_cluster_forms_and_a_node_restarts_with_its_ports() {
    let mut cluster = NatsCluster::start(3);
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.urls().split(',').count(), 3);
    let port: u16 = cluster.url(1).rsplit(':').next().unwrap().parse().unwrap();
    cluster.stop_node(1);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    cluster.restart_node(1);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(cluster.log(1).contains("Server is ready"));
    assert_eq!(cluster.name(1), "n1");
}
