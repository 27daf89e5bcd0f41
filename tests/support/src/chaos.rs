//! A TCP chaos proxy for fault tests: listens on a free loopback port,
//! forwards every connection to one upstream address, and can be switched
//! at any time between passing traffic, delaying it, blackholing it and
//! cutting connections.
//!
//! It runs on its own thread with its own Tokio runtime, so it works the
//! same from synchronous and asynchronous tests and keeps forwarding while
//! the test's runtime is busy. Each connection is two pumps (one per
//! direction); each pump is a reader and a writer joined by a bounded
//! queue, so a delay is added to every chunk without limiting throughput.
//!
//! ```no_run
//! use std::time::Duration;
//! use interop_test_support::{ChaosProxy, Mode, RedisServer};
//! let redis = RedisServer::start();
//! let proxy = ChaosProxy::start(redis.port());
//! // Point the service at proxy.port() instead of redis.port(), then:
//! proxy.set_mode(Mode::Delay(Duration::from_millis(200)));
//! proxy.set_mode(Mode::Blackhole);
//! proxy.set_mode(Mode::Cut);
//! proxy.set_mode(Mode::Pass);
//! ```

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything as it comes.
    Pass,
    /// Forward every chunk this long after it was read (both directions).
    Delay(Duration),
    /// Forward nothing, in either direction, on open and new connections;
    /// connections stay open and bytes wait (like a network partition where
    /// packets vanish: nothing is lost from the TCP stream, it just stalls).
    /// Switching back to `Pass` lets the waiting bytes through.
    Blackhole,
    /// Close every open connection now, and close new ones as soon as they
    /// are accepted, until the mode changes (like a peer that resets
    /// connections).
    Cut,
}

/// Bytes read at once from one side.
const CHUNK: usize = 64 * 1024;
/// Chunks waiting in one direction of one connection at most; past it the
/// reader stops reading (TCP back-pressure to the sender).
const QUEUE: usize = 256;

#[derive(Debug, Clone, Copy)]
struct State {
    mode: Mode,
    /// Bumped by every switch to `Cut`; connections older than the current
    /// value close.
    cuts: u64,
}

/// A running proxy; stops (closing every connection) on drop.
pub struct ChaosProxy {
    port: u16,
    upstream: SocketAddr,
    state: watch::Sender<State>,
    accepted: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ChaosProxy {
    /// A proxy to `127.0.0.1:<upstream_port>`, in [`Mode::Pass`].
    pub fn start(upstream_port: u16) -> Self {
        Self::start_to(SocketAddr::from(([127, 0, 0, 1], upstream_port)))
    }

    /// A proxy to `upstream`, in [`Mode::Pass`].
    pub fn start_to(upstream: SocketAddr) -> Self {
        let listener = StdListener::bind("127.0.0.1:0").expect("binding port 0 on loopback");
        listener
            .set_nonblocking(true)
            .expect("a listener can be made non-blocking");
        let port = listener
            .local_addr()
            .expect("bound listener has an address")
            .port();
        let (state, state_rx) = watch::channel(State {
            mode: Mode::Pass,
            cuts: 0,
        });
        let accepted = Arc::new(AtomicU64::new(0));
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let counter = accepted.clone();
        let thread = std::thread::Builder::new()
            .name(format!("chaos-proxy-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                runtime.block_on(async move {
                    let listener =
                        TcpListener::from_std(listener).expect("a std listener converts");
                    tokio::select! {
                        () = accept_loop(listener, upstream, state_rx, counter) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime drops every connection task.
            })
            .expect("spawning the proxy thread");
        Self {
            port,
            upstream,
            state,
            accepted,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The port clients connect to (instead of the upstream's).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>` with `scheme://` in front, e.g. `url("nats")`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Connections accepted so far (a client reconnecting shows here).
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn mode(&self) -> Mode {
        self.state.borrow().mode
    }

    /// Switches the mode; takes effect on every connection at once.
    pub fn set_mode(&self, mode: Mode) {
        self.state.send_modify(|s| {
            if mode == Mode::Cut {
                s.cuts += 1;
            }
            s.mode = mode;
        });
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The thread may have ended already; either way it stops.
            stop.send(()).ok();
        }
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: watch::Receiver<State>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors or similar: try again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let now = *state.borrow();
        if now.mode == Mode::Cut {
            drop(client);
            continue;
        }
        tokio::spawn(connection(client, upstream, state.clone(), now.cuts));
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    state: watch::Receiver<State>,
    generation: u64,
) {
    let mut waiting = state.clone();
    // Connecting waits out a blackhole too (a SYN that gets no answer).
    let server = tokio::select! {
        s = async {
            passable(&mut waiting, generation).await?;
            TcpStream::connect(upstream).await.ok()
        } => s,
        () = cut(state.clone(), generation) => None,
    };
    let Some(server) = server else {
        return; // Upstream down or cut: the client sees its connection close.
    };
    client.set_nodelay(true).ok();
    server.set_nodelay(true).ok();
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    tokio::select! {
        () = pump(client_rd, server_wr, state.clone(), generation) => {}
        () = pump(server_rd, client_wr, state.clone(), generation) => {}
        () = cut(state, generation) => {}
    }
    // Dropping the halves closes both sockets.
}

/// Resolves when the proxy cuts connections of `generation`.
async fn cut(mut state: watch::Receiver<State>, generation: u64) {
    loop {
        if state.borrow_and_update().cuts != generation {
            return;
        }
        if state.changed().await.is_err() {
            // The proxy is gone: treat as cut.
            return;
        }
    }
}

/// Waits while the mode is `Blackhole`; `None` if the connection was cut.
async fn passable(state: &mut watch::Receiver<State>, generation: u64) -> Option<()> {
    loop {
        let s = *state.borrow_and_update();
        if s.cuts != generation {
            return None;
        }
        if s.mode != Mode::Blackhole {
            return Some(());
        }
        state.changed().await.ok()?;
    }
}

/// One direction: a reader stamps each chunk with when it may be written,
/// a writer writes it then. Ends when either side closes or fails.
async fn pump(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    state: watch::Receiver<State>,
    generation: u64,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let mut read_state = state.clone();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            if passable(&mut read_state, generation).await.is_none() {
                return;
            }
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let delay = match read_state.borrow().mode {
                Mode::Delay(d) => d,
                _ => Duration::ZERO,
            };
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let mut write_state = state;
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if passable(&mut write_state, generation).await.is_none() {
                return;
            }
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
        // The reader saw end of stream: pass the half-close on.
        wr.shutdown().await.ok();
    };
    // The writer finishes what the reader queued before the reader's end
    // counts, so a closed connection still delivers its last bytes.
    let ((), ()) = tokio::join!(reader, writer);
}
