//! A connection's writes gathered while its task runs, and sent as one when the task's
//! poll ends.
//!
//! h2 writes a DATA frame of 256 bytes or more straight from its payload (one vectored
//! write of the frame's head and the payload) and flushes before it takes another frame:
//! a 17 KiB answer (a hundred cards, cut into 16 KiB frames) costs two socket writes, and
//! every answer ready in the same poll two more. Each is a trip through the kernel's TCP
//! stack, and on loopback through the receiver's as well. [`Corked`] takes the
//! connection's writes into one buffer instead, and [`Drive`] writes it out every time
//! the connection's future has been polled: whatever the connection produced in one poll
//! leaves in one write, at the latest when that poll ends.
//!
//! A long poll (a connection thread reading a burst of calls) does not hold answers back:
//! once the oldest buffered byte has waited [`MAX_HOLD`], the next write or flush sends
//! the buffer. And the buffer holds about [`HIGH_WATER`] bytes at most: past it a write
//! first sends what is buffered, and waits (like the socket it stands for) when the peer
//! is not reading.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes buffered beyond which a write sends the buffer before it is taken.
const HIGH_WATER: usize = 64 * 1024;
/// Capacity the buffer keeps once sent (a hundred cards' answer fits); a larger one,
/// after a burst, is given back, so an idle connection holds little.
const KEEP: usize = 32 * 1024;
/// The longest bytes wait in the buffer while the connection's poll goes on: past it, the
/// next write or flush sends them.
const MAX_HOLD: Duration = Duration::from_micros(200);

/// The I/O handed to the HTTP/2 connection: writes go to the shared buffer, reads to the
/// connection itself.
pub(crate) struct Corked<IO> {
    shared: Arc<Mutex<Cork<IO>>>,
}

/// Drives a connection's future over [`Corked`] I/O, sending the buffered writes after
/// every poll of it; ends with the connection's output once everything is sent (or the
/// connection can no longer take it).
pub(crate) struct Drive<F: Future, IO> {
    connection: Pin<Box<F>>,
    shared: Arc<Mutex<Cork<IO>>>,
    /// The connection's output, while the last of its writes are still being sent.
    done: Option<F::Output>,
}

/// `io` corked, and the future that runs `connection` (built over the corked I/O) and
/// sends what it writes.
pub(crate) fn cork<IO>(io: IO) -> (Corked<IO>, Uncork<IO>) {
    cork_holding(io, MAX_HOLD)
}

/// [`cork`], buffered bytes waiting at most `max_hold`.
fn cork_holding<IO>(io: IO, max_hold: Duration) -> (Corked<IO>, Uncork<IO>) {
    let shared = Arc::new(Mutex::new(Cork {
        io,
        out: Vec::new(),
        sent: 0,
        since: None,
        max_hold,
        failed: None,
    }));
    (
        Corked {
            shared: shared.clone(),
        },
        Uncork(shared),
    )
}

/// What [`Drive`] needs of a corked connection, until its future exists.
pub(crate) struct Uncork<IO>(Arc<Mutex<Cork<IO>>>);

impl<IO> Uncork<IO> {
    /// Runs `connection`, sending its writes after each poll.
    pub(crate) fn drive<F: Future>(self, connection: F) -> Drive<F, IO> {
        Drive {
            connection: Box::pin(connection),
            shared: self.0,
            done: None,
        }
    }
}

struct Cork<IO> {
    io: IO,
    out: Vec<u8>,
    /// How much of `out` the connection has taken.
    sent: usize,
    /// When the oldest byte still buffered was written.
    since: Option<Instant>,
    /// How long buffered bytes may wait for the poll to end.
    max_hold: Duration,
    /// The error a send met: every later read, write or flush fails with it.
    failed: Option<(io::ErrorKind, String)>,
}

fn lock<IO>(shared: &Mutex<Cork<IO>>) -> MutexGuard<'_, Cork<IO>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<IO: AsyncWrite + Unpin> Cork<IO> {
    fn buffered(&self) -> usize {
        self.out.len() - self.sent
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            None => Ok(()),
            Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
        }
    }

    /// Sends everything buffered, then flushes the connection.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        let sent = self.poll_send_once(cx);
        if let Poll::Ready(Err(e)) = &sent {
            self.failed = Some((e.kind(), e.to_string()));
        }
        sent
    }

    fn poll_send_once(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        self.since = None;
        if self.out.capacity() > KEEP {
            self.out.shrink_to(KEEP);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Room for more: sends the buffer first when it is past the high-water mark; pending
    /// while it stays there.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        if self.buffered() >= HIGH_WATER || self.held_too_long() {
            if let Poll::Ready(Err(e)) = self.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if self.buffered() >= HIGH_WATER {
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Buffers `bufs`; their length.
    fn take(&mut self, bufs: &[io::IoSlice<'_>]) -> usize {
        let len = bufs.iter().map(|b| b.len()).sum();
        if len > 0 && self.since.is_none() {
            self.since = Some(Instant::now());
        }
        self.out.reserve(len);
        for buf in bufs {
            self.out.extend_from_slice(buf);
        }
        len
    }

    fn held_too_long(&self) -> bool {
        self.since
            .is_some_and(|since| since.elapsed() >= self.max_hold)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Corked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut cork = lock(&self.shared);
        cork.check()?;
        Pin::new(&mut cork.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Corked<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut cork = lock(&self.shared);
        ready!(cork.poll_room(cx))?;
        Poll::Ready(Ok(cork.take(&[io::IoSlice::new(buf)])))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut cork = lock(&self.shared);
        ready!(cork.poll_room(cx))?;
        Poll::Ready(Ok(cork.take(bufs)))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Leaves the bytes for [`Drive`], which sends them once the connection's poll ends,
    /// unless they have waited too long already.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut cork = lock(&self.shared);
        if cork.held_too_long() {
            // Whatever the connection cannot take now, the drive sends once it can.
            let _ = cork.poll_send(cx);
        }
        cork.check().into()
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut cork = lock(&self.shared);
        ready!(cork.poll_send(cx))?;
        Pin::new(&mut cork.io).poll_shutdown(cx)
    }
}

// The connection is boxed and the output is never pinned: moving a `Drive` moves neither.
impl<F: Future, IO> Unpin for Drive<F, IO> {}

impl<F: Future, IO: AsyncWrite + Unpin> Future for Drive<F, IO> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if this.done.is_none()
            && let Poll::Ready(output) = this.connection.poll_unpin(cx)
        {
            this.done = Some(output);
        }
        let sent = lock(&this.shared).poll_send(cx);
        match (sent, this.done.take()) {
            // Sent, or never to be: the connection's own outcome says how it ended.
            (Poll::Ready(_), Some(output)) => Poll::Ready(output),
            (Poll::Pending, Some(output)) => {
                this.done = Some(output);
                Poll::Pending
            }
            // The connection sees the failure at its next read or write.
            (Poll::Ready(Err(_)), None) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            (_, None) => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// A connection that counts the writes that reach it.
    struct Counting {
        io: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let written = Pin::new(&mut self.io).poll_write(cx, buf);
            if written.is_ready() {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            written
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    type Pipe = (
        Corked<Counting>,
        Uncork<Counting>,
        Arc<AtomicUsize>,
        DuplexStream,
    );

    /// A corked end of a pipe of `capacity` bytes, its write count, and the other end; the
    /// buffer waits as long as it does in service.
    fn pipe(capacity: usize) -> Pipe {
        pipe_holding(capacity, MAX_HOLD)
    }

    fn pipe_holding(capacity: usize, max_hold: Duration) -> Pipe {
        let (ours, peer) = tokio::io::duplex(capacity);
        let writes = Arc::new(AtomicUsize::new(0));
        let (corked, uncork) = cork_holding(
            Counting {
                io: ours,
                writes: writes.clone(),
            },
            max_hold,
        );
        (corked, uncork, writes, peer)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[tokio::test]
    async fn what_one_poll_writes_and_flushes_leaves_in_one_write_when_the_poll_ends() {
        // However slowly this poll runs, its bytes wait for its end.
        let (mut corked, uncork, writes, mut peer) =
            pipe_holding(1 << 20, Duration::from_secs(3600));
        let frames = [
            pattern(9, 1),
            pattern(16_384, 2),
            pattern(9, 3),
            pattern(900, 4),
        ];
        let expected: Vec<u8> = frames.concat();
        let count = writes.clone();
        // Two frames of a head and a payload each, flushed after each, as h2 writes
        // DATA frames; then the connection waits for more, as it would for its peer.
        let connection = async move {
            for pair in frames.chunks(2) {
                let slices = [io::IoSlice::new(&pair[0]), io::IoSlice::new(&pair[1])];
                let n = corked.write_vectored(&slices).await.expect("write");
                assert_eq!(n, pair[0].len() + pair[1].len());
                corked.flush().await.expect("flush");
            }
            assert_eq!(writes.load(Ordering::Relaxed), 0, "nothing sent mid-poll");
            std::future::pending::<()>().await;
            corked
        };
        let running = tokio::spawn(uncork.drive(connection));
        let mut got = vec![0; expected.len()];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(got, expected);
        assert_eq!(count.load(Ordering::Relaxed), 1, "sent in one write");
        running.abort();
    }

    #[tokio::test]
    async fn bytes_held_too_long_go_at_the_next_write_of_a_long_poll() {
        let hold = Duration::from_millis(1);
        let (mut corked, uncork, writes, mut peer) = pipe_holding(1 << 20, hold);
        let count = writes.clone();
        let connection = async move {
            corked.write_all(b"first").await.expect("write");
            // A poll that goes on (other streams' frames) without yielding.
            std::thread::sleep(hold * 3);
            assert_eq!(
                writes.load(Ordering::Relaxed),
                0,
                "sent before it was held long"
            );
            corked.write_all(b"second").await.expect("write");
            assert_eq!(writes.load(Ordering::Relaxed), 1, "held past the limit");
            std::future::pending::<()>().await;
            corked
        };
        let running = tokio::spawn(uncork.drive(connection));
        let mut got = [0; 11];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"firstsecond");
        assert_eq!(count.load(Ordering::Relaxed), 2);
        running.abort();
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_holds_the_writer_back_and_loses_nothing() {
        let (mut corked, uncork, _writes, mut peer) = pipe(4 * 1024);
        let data = pattern(4 * HIGH_WATER + 123, 7);
        let sent = data.clone();
        let connection = async move {
            for chunk in sent.chunks(5_000) {
                corked.write_all(chunk).await.expect("write");
                corked.flush().await.expect("flush");
            }
            corked.shutdown().await.expect("shutdown");
        };
        let running = tokio::spawn(uncork.drive(connection));
        // The writer cannot get far ahead: the pipe holds 4 KiB and the cork about
        // HIGH_WATER more.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !running.is_finished(),
            "the writer went on with no one reading"
        );
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.expect("read to the end");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes lost or reordered");
        running.await.expect("connection");
    }

    #[tokio::test]
    async fn a_failed_send_fails_the_connections_next_read_and_write() {
        let (mut corked, uncork, _writes, peer) = pipe(1024);
        drop(peer);
        let (polled_tx, polled) = tokio::sync::oneshot::channel();
        let connection = async move {
            corked.write_all(b"lost").await.expect("buffered");
            corked.flush().await.expect("left for the drive");
            // The drive's send fails after this poll; the connection sees it next.
            tokio::task::yield_now().await;
            let write = corked.write_all(b"more").await;
            let mut buf = [0; 8];
            let read = corked.read(&mut buf).await;
            let _ = polled_tx.send((write.is_err(), read.is_err()));
        };
        tokio::spawn(uncork.drive(connection)).await.expect("ends");
        assert_eq!(polled.await.expect("reported"), (true, true));
    }

    #[tokio::test]
    async fn the_drive_ends_with_the_connection_once_its_last_writes_are_sent() {
        let (mut corked, uncork, _writes, mut peer) = pipe(1024);
        let connection = async move {
            corked.write_all(&pattern(10_000, 9)).await.expect("write");
            "done"
        };
        let running = tokio::spawn(uncork.drive(connection));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!running.is_finished(), "ended with 9 KiB unsent");
        let mut got = vec![0; 10_000];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(got, pattern(10_000, 9));
        assert_eq!(running.await.expect("drive"), "done");
    }
}
