//! DATA frames of a large answer shaped so the answer leaves in one write.
//!
//! An HTTP/2 peer takes DATA frames of at most 16 KiB unless it says otherwise (gRPC
//! clients do not), so a `BatchGetRates(100)` answer of about 17 KiB goes out as a full
//! frame and a short one. The framing layer (h2) copies a payload under
//! [`COPIED_BELOW`] bytes into its write buffer, beside other streams' frames, but
//! writes a larger one straight from the answer's buffer, one write to the socket per
//! such frame. The short frame of about 1 KiB thus costs a write of its own, as much as
//! the full frame. [`OneWrite`] sends that remainder first, as a few frames small enough
//! to be copied, so the whole answer leaves with the full frame's write: one write per
//! full frame instead of one more per answer. The bytes and their order do not change;
//! only where the frames begin.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The largest DATA frame every HTTP/2 peer takes (RFC 9113, SETTINGS_MAX_FRAME_SIZE's
/// initial value), and what gRPC clients keep.
pub const FRAME: usize = 16 * 1024;

/// h2 copies a DATA payload shorter than this into its write buffer, and writes a
/// longer one by itself.
pub const COPIED_BELOW: usize = 256;

/// The longest remainder sent as small frames: each costs the framing layer a frame
/// (and the peer one more chunk), so past a few the write they save is not worth it.
pub const MOST_SPLIT: usize = 8 * (COPIED_BELOW - 1);

/// How a message of `len` bytes is cut: the length of the remainder sent first in small
/// frames (0: sent as it is).
pub fn remainder(len: usize) -> usize {
    let rest = len % FRAME;
    if len > FRAME && rest <= MOST_SPLIT {
        rest
    } else {
        0
    }
}

/// A response body whose data is cut as the module says; trailers pass through.
#[derive(Debug)]
pub struct OneWrite<B> {
    inner: B,
    /// The remainder still to send in small frames.
    small: Bytes,
    /// The full frames, sent after the remainder.
    full: Option<Bytes>,
}

impl<B> OneWrite<B> {
    /// `inner`'s frames, cut as the module says.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            small: Bytes::new(),
            full: None,
        }
    }

    /// The next small frame of the remainder, if any is left.
    fn next_small(&mut self) -> Option<Bytes> {
        let n = self.small.len().min(COPIED_BELOW - 1);
        (n > 0).then(|| self.small.split_to(n))
    }

    fn pending(&self) -> u64 {
        (self.small.len() + self.full.as_ref().map_or(0, Bytes::len)) as u64
    }
}

impl<B> Body for OneWrite<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if let Some(piece) = this.next_small() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if let Some(full) = this.full.take() {
            return Poll::Ready(Some(Ok(Frame::data(full))));
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        let rest = remainder(data.len());
        if rest == 0 {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        this.small = data.split_to(rest);
        this.full = Some(data);
        Poll::Ready(this.next_small().map(|piece| Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.pending() == 0 && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let pending = self.pending();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;

    fn body(
        chunks: Vec<Bytes>,
        trailers: bool,
    ) -> OneWrite<impl Body<Data = Bytes, Error = Infallible> + Unpin> {
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
            chunks.into_iter().map(|c| Ok(Frame::data(c))).collect();
        if trailers {
            let mut map = http::HeaderMap::new();
            map.insert("grpc-status", http::HeaderValue::from_static("0"));
            frames.push(Ok(Frame::trailers(map)));
        }
        OneWrite::new(StreamBody::new(futures::stream::iter(frames)))
    }

    async fn frames(
        mut b: OneWrite<impl Body<Data = Bytes, Error = Infallible> + Unpin>,
    ) -> (Vec<Bytes>, bool) {
        let (mut data, mut trailers) = (Vec::new(), false);
        while let Some(frame) = b.frame().await {
            match frame.expect("infallible").into_data() {
                Ok(d) => data.push(d),
                Err(f) => trailers = f.is_trailers(),
            }
        }
        (data, trailers)
    }

    fn message(len: usize) -> Bytes {
        (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
    }

    #[tokio::test]
    async fn an_answer_just_over_a_frame_sends_its_remainder_first_in_copied_frames() {
        let len = FRAME + 1072;
        let (data, trailers) = frames(body(vec![message(len)], true)).await;
        assert!(trailers, "trailers pass through");
        assert_eq!(data.concat(), message(len), "same bytes, same order");
        let (last, small) = data.split_last().expect("frames");
        assert_eq!(last.len(), FRAME, "one full frame, last");
        assert_eq!(small.len(), 5);
        assert!(small.iter().all(|f| f.len() < COPIED_BELOW), "{small:?}");
    }

    #[tokio::test]
    async fn answers_that_split_would_not_help_pass_as_they_are() {
        let far_over = FRAME + MOST_SPLIT + 1;
        for len in [1, 300, FRAME, 2 * FRAME, far_over] {
            let (data, _) = frames(body(vec![message(len)], true)).await;
            assert_eq!(data, vec![message(len)], "{len} bytes");
        }
        assert_eq!(remainder(FRAME + MOST_SPLIT), MOST_SPLIT);
        assert_eq!(remainder(3 * FRAME + 10), 10);
    }

    #[tokio::test]
    async fn every_chunk_of_a_body_is_cut_on_its_own() {
        let (a, b) = (message(FRAME + 300), message(2 * FRAME + 40));
        let (data, trailers) = frames(body(vec![a.clone(), b.clone()], false)).await;
        assert!(!trailers);
        assert_eq!(data.concat(), [a, b].concat());
        let sizes: Vec<usize> = data.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [255, 45, FRAME, 40, 2 * FRAME]);
    }

    #[test]
    fn the_size_hint_counts_what_is_held_back() {
        let mut b = body(vec![message(FRAME + 600)], false);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let first = Pin::new(&mut b).poll_frame(&mut cx);
        assert!(matches!(first, Poll::Ready(Some(Ok(_)))));
        assert_eq!(b.size_hint().lower(), (FRAME + 600 - 255) as u64);
        assert!(!b.is_end_stream());
    }
}
