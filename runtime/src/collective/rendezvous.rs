//! [`Rendezvous`]: the ranks of a run meet over TCP at rank 0's `MASTER_ADDR:MASTER_PORT`,
//! rank 0 hands every other rank a payload (NCCL's unique id), and the connections stay open
//! as a heartbeat: a peer whose connection closes (it exited or crashed) or that falls silent
//! (its host hangs) is reported through [`PeerWatch`] within the timeout. Only the id, the
//! heartbeat and abort messages go over these connections, never tensor data.
//!
//! Wire format: a joining rank sends `KILN` + its rank + the world size (u32 little-endian);
//! rank 0 answers `ID` + a u32 length + the payload. Afterwards each side sends one byte at a
//! time: `H` (heartbeat), `B` (finished: closing is not a failure), or `A` + a u32 length +
//! a message (this rank failed; rank 0 relays it to the others).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::DistEnv;
use crate::{Error, Result};

/// The bytes of NCCL's unique id, the payload `kiln train` exchanges.
pub const UNIQUE_ID_BYTES: usize = 128;

const HELLO: &[u8; 4] = b"KILN";
const ID: &[u8; 2] = b"ID";
const HEARTBEAT: u8 = b'H';
const BYE: u8 = b'B';
const ABORT: u8 = b'A';
/// The longest payload or abort message accepted.
const MAX_MESSAGE: u32 = 1 << 20;

/// What a failure callback is given: the reason, one line.
type FailureHook = Box<dyn Fn(&str) + Send + Sync>;

/// Reports the failure of a peer of the rendezvous: the first one is kept, and the hook (if
/// any) is called with it once.
#[derive(Clone, Default)]
pub struct PeerWatch {
    inner: Arc<WatchState>,
}

#[derive(Default)]
struct WatchState {
    failure: Mutex<Option<String>>,
    hook: Mutex<Option<FailureHook>>,
}

impl PeerWatch {
    /// The first failure seen, if any.
    pub fn failure(&self) -> Option<String> {
        lock(&self.inner.failure).clone()
    }

    /// Calls `hook` with the first failure (at once if there was one already). `kiln train`
    /// prints it and exits: the main thread may be blocked in a collective that will never
    /// complete.
    pub fn on_failure(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        let failure = self.failure();
        match failure {
            Some(f) => hook(&f),
            None => *lock(&self.inner.hook) = Some(Box::new(hook)),
        }
    }

    fn fail(&self, message: String) {
        {
            let mut failure = lock(&self.inner.failure);
            if failure.is_some() {
                return;
            }
            *failure = Some(message.clone());
        }
        if let Some(hook) = lock(&self.inner.hook).take() {
            hook(&message);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A connection to one peer: rank 0 holds one per other rank, the others one to rank 0.
struct Peer {
    rank: usize,
    writer: Mutex<TcpStream>,
}

impl Peer {
    fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        lock(&self.writer).write_all(bytes)
    }
}

/// The ranks' meeting, kept for the run: the connections and their heartbeat. Dropping it
/// tells the peers this rank finished (so its closing connection is not a failure).
pub struct Rendezvous {
    rank: usize,
    peers: Arc<Vec<Peer>>,
    watch: PeerWatch,
    closing: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Rendezvous {
    /// Meets the other ranks of `env` within `timeout`: rank 0 listens at `MASTER_ADDR:
    /// MASTER_PORT`, waits for every other rank and sends each the bytes `payload()` makes;
    /// the others connect (retrying until the timeout, as rank 0 may start later) and receive
    /// them. Returns the meeting and the payload; afterwards a peer silent for `timeout`, or
    /// whose connection closes before it finished, is reported through [`Rendezvous::watch`].
    pub fn start(
        env: &DistEnv,
        payload: impl FnOnce() -> Result<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(Rendezvous, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let (streams, payload) = if env.rank == 0 {
            let payload = payload()?;
            (host(env, &payload, deadline)?, payload)
        } else {
            let (stream, payload) = join(env, deadline)?;
            (vec![(0, stream)], payload)
        };
        let meeting = Rendezvous::watch_peers(env.rank, streams, timeout)?;
        Ok((meeting, payload))
    }

    fn watch_peers(
        rank: usize,
        streams: Vec<(usize, TcpStream)>,
        timeout: Duration,
    ) -> Result<Rendezvous> {
        let io = |e: std::io::Error| Error::Distributed(format!("rendezvous: {e}"));
        let mut readers = vec![];
        let mut peers = vec![];
        for (peer, stream) in streams {
            stream.set_read_timeout(Some(timeout)).map_err(io)?;
            // A peer that stops reading must not block the heartbeat, an abort or the goodbye.
            stream
                .set_write_timeout(Some(timeout.min(Duration::from_secs(5))))
                .map_err(io)?;
            readers.push((peer, stream.try_clone().map_err(io)?));
            peers.push(Peer {
                rank: peer,
                writer: Mutex::new(stream),
            });
        }
        let peers = Arc::new(peers);
        let watch = PeerWatch::default();
        let closing = Arc::new(AtomicBool::new(false));
        let mut threads = vec![];
        for (peer, stream) in readers {
            let (peers, watch, closing) = (peers.clone(), watch.clone(), closing.clone());
            threads.push(std::thread::spawn(move || {
                read_peer(rank, peer, stream, timeout, &peers, &watch, &closing)
            }));
        }
        let interval = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        {
            let (peers, closing) = (peers.clone(), closing.clone());
            threads.push(std::thread::spawn(move || {
                while !closing.load(Ordering::SeqCst) {
                    for p in peers.iter() {
                        // A failed write shows up on the reading side too.
                        let _ = p.send(&[HEARTBEAT]);
                    }
                    sleep_unless(&closing, interval);
                }
            }));
        }
        Ok(Rendezvous {
            rank,
            peers,
            watch,
            closing,
            threads,
        })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Where a peer's failure is reported.
    pub fn watch(&self) -> PeerWatch {
        self.watch.clone()
    }

    /// Tells the peers this rank failed with `message` (rank 0 tells every rank); they report
    /// it through their watch at once instead of waiting for a timeout.
    pub fn abort(&self, message: &str) {
        let text = format!("rank {} failed: {message}", self.rank);
        for p in self.peers.iter() {
            let _ = p.send(&abort_message(&text));
        }
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        for p in self.peers.iter() {
            let _ = p.send(&[BYE]);
            let _ = lock(&p.writer).shutdown(Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn abort_message(text: &str) -> Vec<u8> {
    let bytes = &text.as_bytes()[..text.len().min(MAX_MESSAGE as usize)];
    let mut m = vec![ABORT];
    m.extend((bytes.len() as u32).to_le_bytes());
    m.extend(bytes);
    m
}

fn sleep_unless(flag: &AtomicBool, total: Duration) {
    let end = Instant::now() + total;
    while !flag.load(Ordering::SeqCst) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10).min(total));
    }
}

/// Reads one peer's messages until it says bye, fails, or this rank closes.
fn read_peer(
    rank: usize,
    peer: usize,
    mut stream: TcpStream,
    timeout: Duration,
    peers: &[Peer],
    watch: &PeerWatch,
    closing: &AtomicBool,
) {
    let failure = loop {
        let mut kind = [0u8];
        match stream.read_exact(&mut kind) {
            Ok(()) if kind[0] == HEARTBEAT => continue,
            Ok(()) if kind[0] == BYE => return,
            Ok(()) if kind[0] == ABORT => {
                break read_text(&mut stream)
                    .unwrap_or_else(|| format!("rank {peer} failed (its message was cut off)"));
            }
            Ok(()) => break format!("rank {peer} sent an unknown message {:#04x}", kind[0]),
            Err(_) if closing.load(Ordering::SeqCst) => return,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break format!(
                    "rank {peer} sent no heartbeat for {:.1} s (its host hangs or the network \
                     is down)",
                    timeout.as_secs_f64()
                );
            }
            Err(_) => {
                break format!(
                    "lost rank {peer}: its connection closed before it finished (it exited or \
                     crashed)"
                );
            }
        }
    };
    if closing.load(Ordering::SeqCst) {
        return;
    }
    if rank == 0 {
        // The other ranks hear of it from rank 0, the only peer they are connected to.
        for p in peers.iter().filter(|p| p.rank != peer) {
            let _ = p.send(&abort_message(&failure));
        }
    }
    watch.fail(failure);
}

fn read_text(stream: &mut TcpStream) -> Option<String> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let len = u32::from_le_bytes(len).min(MAX_MESSAGE) as usize;
    let mut text = vec![0u8; len];
    stream.read_exact(&mut text).ok()?;
    Some(String::from_utf8_lossy(&text).into_owned())
}

fn addresses(env: &DistEnv) -> Result<Vec<SocketAddr>> {
    let found: Vec<SocketAddr> = (env.master_addr.as_str(), env.master_port)
        .to_socket_addrs()
        .map_err(|e| {
            Error::Distributed(format!(
                "rendezvous: MASTER_ADDR {} does not resolve: {e}",
                env.master_addr
            ))
        })?
        .collect();
    if found.is_empty() {
        return Err(Error::Distributed(format!(
            "rendezvous: MASTER_ADDR {} has no address",
            env.master_addr
        )));
    }
    Ok(found)
}

/// Rank 0: accepts every other rank, then sends each the payload.
fn host(env: &DistEnv, payload: &[u8], deadline: Instant) -> Result<Vec<(usize, TcpStream)>> {
    let master = env.master();
    let listener = addresses(env)?
        .into_iter()
        .find_map(|a| TcpListener::bind(a).ok())
        .ok_or_else(|| {
            Error::Distributed(format!(
                "rendezvous: rank 0 cannot listen at {master} (MASTER_ADDR must be this host's \
                 address, and MASTER_PORT free)"
            ))
        })?;
    let io = |e: std::io::Error| Error::Distributed(format!("rendezvous at {master}: {e}"));
    listener.set_nonblocking(true).map_err(io)?;
    let world = env.world_size;
    let mut joined: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    while joined.iter().skip(1).any(Option::is_none) {
        let now = Instant::now();
        if now >= deadline {
            let missing: Vec<String> = (1..world)
                .filter(|&r| joined[r].is_none())
                .map(|r| r.to_string())
                .collect();
            return Err(Error::Distributed(format!(
                "rendezvous at {master}: rank(s) {} did not join within the timeout \
                 ({}: KILN_DIST_TIMEOUT_S)",
                missing.join(", "),
                super::TIMEOUT_VAR
            )));
        }
        match listener.accept() {
            Ok((mut stream, from)) => {
                stream.set_nonblocking(false).map_err(io)?;
                stream.set_nodelay(true).map_err(io)?;
                stream
                    .set_read_timeout(Some(
                        deadline
                            .saturating_duration_since(now)
                            .max(Duration::from_millis(1)),
                    ))
                    .map_err(io)?;
                let mut hello = [0u8; 12];
                if stream.read_exact(&mut hello).is_err() || &hello[..4] != HELLO {
                    continue; // not a rank of ours (a port scan, a stale client)
                }
                let rank = u32::from_le_bytes([hello[4], hello[5], hello[6], hello[7]]) as usize;
                let theirs = u32::from_le_bytes([hello[8], hello[9], hello[10], hello[11]]);
                if theirs as usize != world {
                    return Err(Error::Distributed(format!(
                        "rendezvous at {master}: a rank from {from} says WORLD_SIZE={theirs}, \
                         rank 0 has {world}"
                    )));
                }
                if rank == 0 || rank >= world || joined[rank].is_some() {
                    return Err(Error::Distributed(format!(
                        "rendezvous at {master}: a second rank {rank} joined (from {from}); \
                         every rank needs its own RANK"
                    )));
                }
                joined[rank] = Some(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io(e)),
        }
    }
    let mut message = ID.to_vec();
    message.extend((payload.len() as u32).to_le_bytes());
    message.extend(payload);
    let mut streams = vec![];
    for (rank, stream) in joined.into_iter().enumerate().skip(1) {
        let Some(mut stream) = stream else { continue };
        stream.write_all(&message).map_err(io)?;
        streams.push((rank, stream));
    }
    Ok(streams)
}

/// Any other rank: connects to rank 0 (retrying until the deadline) and reads the payload.
fn join(env: &DistEnv, deadline: Instant) -> Result<(TcpStream, Vec<u8>)> {
    let master = env.master();
    let addrs = addresses(env)?;
    let mut last_error = String::new();
    let mut stream = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Distributed(format!(
                "rendezvous: rank {} could not reach rank 0 at {master} within the timeout \
                 ({}): {last_error} (is MASTER_ADDR rank 0's host, and is rank 0 running?)",
                env.rank,
                super::TIMEOUT_VAR
            )));
        }
        let attempt = left.min(Duration::from_secs(1));
        let mut connected = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, attempt) {
                // On loopback, connecting to a port nobody listens on yet can pick that very
                // port as the local one and connect to itself (TCP simultaneous open), which
                // would also keep rank 0 from listening there: drop it and retry.
                Ok(s) if s.local_addr().ok() == s.peer_addr().ok() => {
                    last_error = format!("{a}: connected to itself");
                }
                Ok(s) => {
                    connected = Some(s);
                    break;
                }
                Err(e) => last_error = format!("{a}: {e}"),
            }
        }
        match connected {
            Some(s) => break s,
            None => std::thread::sleep(Duration::from_millis(100).min(left)),
        }
    };
    let io = |e: std::io::Error| Error::Distributed(format!("rendezvous at {master}: {e}"));
    stream.set_nodelay(true).map_err(io)?;
    let mut hello = HELLO.to_vec();
    hello.extend((env.rank as u32).to_le_bytes());
    hello.extend((env.world_size as u32).to_le_bytes());
    stream.write_all(&hello).map_err(io)?;
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(io)?;
    let mut head = [0u8; 6];
    stream.read_exact(&mut head).map_err(|e| {
        Error::Distributed(format!(
            "rendezvous at {master}: rank 0 accepted rank {} but sent no id within the timeout: \
             {e} (another rank may be missing)",
            env.rank
        ))
    })?;
    let len = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
    if &head[..2] != ID || len > MAX_MESSAGE {
        return Err(Error::Distributed(format!(
            "rendezvous at {master}: what answered is not rank 0 of a kiln run"
        )));
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).map_err(io)?;
    Ok((stream, payload))
}
