//! One session's byte pipe, as messages: frames are encoded (and
//! compressed) on the thread that sends them, written by a writer thread,
//! and read and decoded by a reader thread, so neither side's disk work
//! ever waits on the pipe and the pipe never waits on the disk.
//!
//! The reader hands messages over a channel bounded by count; the frames
//! it decodes are at most [`DATA_PIECE`] plus headers for data, so what a
//! fast peer can make this side hold is bounded
//! (`IN_QUEUE * MAX_FRAME` at the very worst, a few MiB in practice).
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use haul_formats::wire::{
    encode_frame, encode_preamble, Decoder, Message, Preamble, Received, WireError,
};

/// Bytes of file data per Data message.
pub(crate) const DATA_PIECE: usize = 256 << 10;
/// Messages decoded and not yet taken, at most, on a receiving side.
const IN_QUEUE: usize = 64;

/// Encoded frames waiting for the writer, at most.
const OUT_QUEUE: usize = 16;
/// Frames waiting for the writer from which on new frames are compressed.
const PRESSURE: usize = 4;
/// How long the writer waits for more frames before sending what it has.
const COALESCE: Duration = Duration::from_micros(200);
/// How often a waiting receive checks whether the peer went silent.
const POLL: Duration = Duration::from_secs(1);

/// Why the session's pipe stopped.
#[derive(Debug, Clone)]
pub(crate) enum ConnError {
    /// The peer's bytes broke the protocol.
    Wire(String),
    /// Reading or writing the pipe failed.
    Io(String),
    /// The peer closed its end.
    Closed,
    /// Nothing came within the deadline.
    Timeout(&'static str),
    /// The peer reported a fatal error (an Error message for the session).
    Peer(String),
    /// The peer sent nothing, not even a keepalive, for this many seconds.
    Silent(u64),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Wire(m) => write!(f, "protocol error: {m}"),
            ConnError::Io(m) => write!(f, "{m}"),
            ConnError::Closed => write!(f, "the connection closed early"),
            ConnError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            ConnError::Peer(m) => write!(f, "the peer failed: {m}"),
            ConnError::Silent(s) => write!(
                f,
                "the peer sent nothing for {s} s (not even a keepalive): it hung or the link is down"
            ),
        }
    }
}

impl From<WireError> for ConnError {
    fn from(e: WireError) -> ConnError {
        ConnError::Wire(e.to_string())
    }
}

/// Bytes that crossed the pipe, each way, when the peer was last heard,
/// and the rates that decide whether compressing pays.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    /// When the session started, and milliseconds after it that bytes last
    /// came from the peer.
    base: Instant,
    heard_ms: AtomicU64,
    /// Bytes per second the pipe took while frames were queued for it
    /// (0: not measured yet).
    link_rate: AtomicU64,
    /// Bytes zstd took in, and the nanoseconds it spent, on this side.
    zstd_bytes: AtomicU64,
    zstd_nanos: AtomicU64,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            base: Instant::now(),
            heard_ms: AtomicU64::new(0),
            link_rate: AtomicU64::new(0),
            zstd_bytes: AtomicU64::new(0),
            zstd_nanos: AtomicU64::new(0),
        }
    }

    fn heard(&self) {
        self.heard_ms
            .store(self.base.elapsed().as_millis() as u64, Relaxed);
    }

    /// How long since the peer last sent anything.
    fn silence(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heard_ms.load(Relaxed)))
    }

    /// Whether compressing a frame now is likely to pay: the link, measured
    /// while backlogged, takes bytes at less than half the rate zstd
    /// compresses them here (so at a ratio of 2 or more, zstd keeps up and
    /// the link carries more content per second). Once the link is known
    /// to limit, the first few MiB are compressed to learn zstd's rate.
    fn compression_pays(&self) -> bool {
        let (zb, zn) = (self.zstd_bytes.load(Relaxed), self.zstd_nanos.load(Relaxed));
        let link = self.link_rate.load(Relaxed);
        if link == 0 {
            // The writer has not been kept busy for a whole sample: the
            // link is not what limits.
            return false;
        }
        if zb < LEARN_BYTES || zn == 0 {
            return true;
        }
        let zstd_rate = (u128::from(zb) * 1_000_000_000 / u128::from(zn)) as u64;
        link.saturating_mul(2) < zstd_rate
    }
}

/// Bytes compressed before zstd's rate is trusted.
const LEARN_BYTES: u64 = 4 << 20;
/// How often the writer measures the link's rate, while backlogged.
const LINK_SAMPLE: Duration = Duration::from_millis(100);

/// The sending half: cheap to clone, one per thread that sends.
#[derive(Clone)]
pub(crate) struct Out {
    tx: Sender<Vec<u8>>,
    level: Option<i32>,
    counters: Arc<Counters>,
    /// Set by the writer when writing fails: later sends report it.
    failed: Arc<Mutex<Option<String>>>,
}

impl Out {
    /// Encodes `msg` here and queues it for the writer. Content is
    /// compressed only when frames are queuing for the pipe (the link, or
    /// ssh's cipher, is what limits) and the link is clearly slower than
    /// zstd here ([`Counters::compression_pays`]); otherwise compressing
    /// would only spend the CPU the rest of the copy needs (on a fast LAN,
    /// or with both ends on one host, zstd is no faster than the pipe).
    pub(crate) fn send(&self, msg: &Message) -> Result<(), ConnError> {
        let mut buf = Vec::new();
        // Only content is worth it: an entry's few hundred bytes compress
        // poorly alone and cost a context's set-up each.
        let level = self.level.filter(|_| {
            matches!(msg, Message::Data { .. })
                && self.tx.len() >= PRESSURE
                && self.counters.compression_pays()
        });
        let t = level.map(|_| Instant::now());
        encode_frame(msg, level, &mut buf)?;
        if let (Some(t), Message::Data { bytes, .. }) = (t, msg) {
            self.counters
                .zstd_bytes
                .fetch_add(bytes.len() as u64, Relaxed);
            self.counters
                .zstd_nanos
                .fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
        }
        self.send_raw(buf)
    }

    /// Queues bytes already encoded (the preamble).
    pub(crate) fn send_raw(&self, buf: Vec<u8>) -> Result<(), ConnError> {
        self.tx.send(buf).map_err(|_| self.failure())
    }

    fn failure(&self) -> ConnError {
        match &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(m) => ConnError::Io(m.clone()),
            None => ConnError::Closed,
        }
    }
}

/// One session's pipe: messages out through [`Out`], messages in through
/// [`Conn::recv`].
pub(crate) struct Conn {
    pub(crate) out: Out,
    rx: Receiver<Result<Received, ConnError>>,
    pub(crate) counters: Arc<Counters>,
    threads: Vec<JoinHandle<()>>,
    /// How long the peer may stay silent (it sends keepalives while busy).
    idle: Duration,
}

/// How the writer paces itself (`--bwlimit`): bytes per second.
fn pace(start: Instant, total: u64, rate: u64) {
    let due = Duration::from_secs_f64(total as f64 / rate as f64);
    let spent = start.elapsed();
    if due > spent {
        std::thread::sleep(due - spent);
    }
}

impl Conn {
    /// Starts the threads over `reader` and `writer`, and sends this side's
    /// preamble. `level` is the zstd level of outgoing frames (`None`:
    /// plain); `bwlimit` caps bytes written per second; `idle` is how long
    /// the peer may send nothing at all (not even a keepalive) before the
    /// session fails. This side sends a keepalive after a quarter of that
    /// (at most 10 s) without sending anything else.
    pub(crate) fn start(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        level: Option<i32>,
        bwlimit: Option<u64>,
        idle: Duration,
    ) -> Conn {
        let counters = Arc::new(Counters::new());
        let keepalive = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
        let (tx, wrx) = bounded::<Vec<u8>>(OUT_QUEUE);
        let failed = Arc::new(Mutex::new(None));
        let (rtx, rx) = bounded(IN_QUEUE);
        let mut threads = Vec::new();
        {
            let counters = counters.clone();
            let failed = failed.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("wire-out".into())
                    .spawn(move || {
                        if let Err(e) = write_loop(writer, &wrx, &counters, bwlimit, keepalive) {
                            *failed.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(format!("writing to the peer: {e}"));
                        }
                    })
                    .expect("spawning a thread"),
            );
        }
        {
            let counters = counters.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("wire-in".into())
                    .spawn(move || read_loop(reader, &rtx, &counters))
                    .expect("spawning a thread"),
            );
        }
        let out = Out {
            tx,
            level,
            counters: counters.clone(),
            failed,
        };
        let conn = Conn {
            out,
            rx,
            counters,
            threads,
            idle,
        };
        // A preamble always encodes: the version is ours.
        if let Ok(p) = encode_preamble(env!("CARGO_PKG_VERSION")) {
            let _ = conn.out.send_raw(p);
        }
        conn
    }

    /// Sets the zstd level of frames sent from now on (before [`Out`] is
    /// cloned: clones keep theirs).
    pub(crate) fn set_level(&mut self, level: Option<i32>) {
        self.out.level = level;
    }

    /// From now on the reader never waits: messages are relayed into an
    /// unbounded queue, and more than `limit` queued is a protocol error.
    /// For a sender, whose peer would otherwise deadlock against it: the
    /// receiver blocks sending its answers while the sender blocks
    /// sending content the receiver is not reading. Answers are bounded
    /// by the entries announced, hence the limit.
    pub(crate) fn unbound(&mut self, limit: usize) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let old = std::mem::replace(&mut self.rx, rx);
        self.threads.push(
            std::thread::Builder::new()
                .name("wire-relay".into())
                .spawn(move || {
                    while let Ok(m) = old.recv() {
                        if tx.len() >= limit {
                            let _ = tx.send(Err(ConnError::Wire(format!(
                                "the peer sent more than {limit} messages ahead of what was asked"
                            ))));
                            return;
                        }
                        if tx.send(m).is_err() {
                            return;
                        }
                    }
                })
                .expect("spawning a thread"),
        );
    }

    /// The peer's preamble, within `deadline`.
    pub(crate) fn preamble(&self, deadline: Duration) -> Result<Preamble, ConnError> {
        match self.rx.recv_timeout(deadline) {
            Ok(Ok(Received::Preamble(p))) => Ok(p),
            Ok(Ok(Received::Message(m))) => Err(ConnError::Wire(format!(
                "a {} message came before the preamble",
                m.name()
            ))),
            Ok(Err(e)) => Err(e),
            Err(RecvTimeoutError::Timeout) => Err(ConnError::Timeout("the peer's preamble")),
            Err(RecvTimeoutError::Disconnected) => Err(ConnError::Closed),
        }
    }

    /// The next message; an error once the pipe has broken or closed.
    pub(crate) fn recv(&self) -> Result<Message, ConnError> {
        self.recv_within(None)
    }

    /// The next message within `deadline` (`None`: as long as the peer
    /// is heard from, [`Conn::silent`]).
    pub(crate) fn recv_within(&self, deadline: Option<Duration>) -> Result<Message, ConnError> {
        let r = match deadline {
            Some(d) => self.rx.recv_timeout(d).map_err(|e| match e {
                RecvTimeoutError::Timeout => ConnError::Timeout("the peer"),
                RecvTimeoutError::Disconnected => ConnError::Closed,
            })?,
            None => loop {
                match self.rx.recv_timeout(POLL.min(self.idle)) {
                    Ok(r) => break r,
                    Err(RecvTimeoutError::Timeout) => self.silent()?,
                    Err(RecvTimeoutError::Disconnected) => return Err(ConnError::Closed),
                }
            },
        };
        Conn::message(r)
    }

    /// An error if the peer has sent nothing at all for longer than the
    /// session allows (a live peer sends keepalives while it is busy).
    pub(crate) fn silent(&self) -> Result<(), ConnError> {
        let quiet = self.counters.silence();
        if quiet > self.idle {
            return Err(ConnError::Silent(quiet.as_secs()));
        }
        Ok(())
    }

    /// The inbound queue, for waiting on several sessions at once.
    pub(crate) fn inbound(&self) -> &Receiver<Result<Received, ConnError>> {
        &self.rx
    }

    /// A message taken from [`Conn::inbound`], as [`Conn::recv`] gives it.
    pub(crate) fn message(r: Result<Received, ConnError>) -> Result<Message, ConnError> {
        match r? {
            Received::Message(m) => Ok(m),
            Received::Preamble(_) => Err(ConnError::Wire("a second preamble".into())),
        }
    }

    /// The next message if one is queued already.
    pub(crate) fn try_recv(&self) -> Result<Option<Message>, ConnError> {
        match self.rx.try_recv() {
            Ok(r) => match r? {
                Received::Message(m) => Ok(Some(m)),
                Received::Preamble(_) => Err(ConnError::Wire("a second preamble".into())),
            },
            Err(crossbeam_channel::TryRecvError::Empty) => Ok(None),
            Err(crossbeam_channel::TryRecvError::Disconnected) => Err(ConnError::Closed),
        }
    }

    /// Closes the sending half (the writer flushes and closes the pipe) and
    /// waits for the writer; the reader is left to end with the peer.
    pub(crate) fn close(self) -> (u64, u64) {
        let Conn {
            out,
            rx,
            counters,
            mut threads,
            ..
        } = self;
        drop(out);
        drop(rx);
        // The writer is first; the reader may still block on a live peer.
        if !threads.is_empty() {
            let _ = threads.remove(0).join();
        }
        (counters.sent.load(Relaxed), counters.received.load(Relaxed))
    }
}

fn write_loop(
    w: impl Write,
    rx: &Receiver<Vec<u8>>,
    counters: &Counters,
    bwlimit: Option<u64>,
    keepalive: Duration,
) -> io::Result<()> {
    let mut ping = Vec::new();
    // An empty message always encodes.
    let _ = encode_frame(&Message::KeepAlive, None, &mut ping);
    let mut w = io::BufWriter::with_capacity(256 << 10, w);
    let start = Instant::now();
    let mut unflushed = false;
    // The link's rate over the last sample, counted only while frames
    // kept queuing (otherwise it measures the sender, not the link).
    let mut sample = (Instant::now(), 0u64, true);
    loop {
        // With bytes waiting, a moment's grace for more before they go:
        // a stream of small frames (entries, answers) then leaves in a
        // few large writes, not one write (and one ssh packet) each.
        let next = if unflushed {
            match rx.recv_timeout(COALESCE) {
                Ok(b) => Some(b),
                Err(RecvTimeoutError::Timeout) => {
                    w.flush()?;
                    unflushed = false;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => None,
            }
        } else {
            match rx.recv_timeout(keepalive) {
                Ok(b) => Some(b),
                Err(RecvTimeoutError::Timeout) => {
                    // Nothing to send for a while: tell the peer this side
                    // is alive (busy on its disk, or waiting for the peer).
                    w.write_all(&ping)?;
                    w.flush()?;
                    counters.sent.fetch_add(ping.len() as u64, Relaxed);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => None,
            }
        };
        let Some(buf) = next else { break };
        w.write_all(&buf)?;
        unflushed = true;
        sample.1 += buf.len() as u64;
        sample.2 &= !rx.is_empty();
        let spent = sample.0.elapsed();
        if spent >= LINK_SAMPLE {
            if sample.2 {
                let rate = (sample.1 as f64 / spent.as_secs_f64()) as u64;
                counters.link_rate.store(rate.max(1), Relaxed);
            }
            sample = (Instant::now(), 0, true);
        }
        let total = counters.sent.fetch_add(buf.len() as u64, Relaxed) + buf.len() as u64;
        if let Some(rate) = bwlimit {
            w.flush()?;
            unflushed = false;
            pace(start, total, rate);
        }
    }
    w.flush()
}

fn read_loop(mut r: impl Read, tx: &Sender<Result<Received, ConnError>>, counters: &Counters) {
    let mut d = Decoder::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => {
                let end = match d.finish() {
                    Ok(()) => ConnError::Closed,
                    Err(e) => e.into(),
                };
                let _ = tx.send(Err(end));
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(Err(ConnError::Io(format!("reading from the peer: {e}"))));
                return;
            }
        };
        counters.received.fetch_add(n as u64, Relaxed);
        counters.heard();
        d.feed(&buf[..n]);
        loop {
            match d.next() {
                Ok(Some(Received::Message(Message::KeepAlive))) => {}
                Ok(Some(m)) => {
                    if tx.send(Ok(m)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            }
        }
    }
}
