//! The request body the Mesh hands to its inner service: the caller's body, kept (up to a
//! cap) while it streams, so that a request whose attempt never reached an application can
//! be sent again, body and all, to another Pod.
//!
//! Every attempt of one request reads the same [`Capture`]: frames already read from the
//! caller's body are replayed from memory, the rest is read from the body (and kept). Only
//! the newest attempt may read; an older one that is still being polled (its connection
//! task has not noticed the failure yet) gets an error instead of stealing frames.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;

/// The default cap on the bytes kept for a replay (64 KiB).
pub const DEFAULT_MAX_REPLAY_BODY: usize = 64 * 1024;

pin_project_lite::pin_project! {
    /// A request body as the Mesh sends it to its inner service: the caller's body `B`,
    /// with what it has sent kept (up to [`MeshBuilder::max_replay_body`](
    /// crate::MeshBuilder::max_replay_body)) so a retry on another Pod can send it again.
    ///
    /// Build the inner client for this body type (`Client::builder(..).build_http()`
    /// infers it when the client is only used through the Mesh). Empty bodies and bodies
    /// too large to keep cost nothing extra: they are passed through as they are.
    pub struct ReplayBody<B> {
        #[pin]
        state: State<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<B> {
        /// Nothing to send.
        Empty,
        /// Passed through without keeping anything (too large, or retries are off).
        Direct { #[pin] body: B },
        /// Read through the shared capture, as attempt `attempt`.
        Shared { capture: Arc<Mutex<Capture<B>>>, attempt: u32, next: usize },
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.state {
            State::Empty => "empty",
            State::Direct { .. } => "direct",
            State::Shared { .. } => "replayable",
        };
        f.debug_struct("ReplayBody").field("kind", &kind).finish()
    }
}

/// What every attempt of one request shares.
pub(crate) struct Capture<B> {
    /// The caller's body, until it ends.
    body: Option<Pin<Box<B>>>,
    /// Data frames read so far, in order.
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// Bytes in `chunks`.
    kept: usize,
    max: usize,
    /// More than `max` bytes were read (the kept data was dropped): no replay.
    overflowed: bool,
    /// The attempt allowed to read.
    current: u32,
    size_hint: SizeHint,
}

/// The shared half kept by the Mesh, to start further attempts.
pub(crate) struct Replay<B> {
    capture: Arc<Mutex<Capture<B>>>,
}

impl<B> Clone for Replay<B> {
    fn clone(&self) -> Self {
        Self {
            capture: self.capture.clone(),
        }
    }
}

/// A second attempt raced an older one that was still reading.
#[derive(Debug)]
struct Superseded;

impl fmt::Display for Superseded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body taken over by a retry on another endpoint")
    }
}

impl std::error::Error for Superseded {}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body` to be sent as it is, once (for requests sent around the Mesh through
    /// the same client).
    pub fn new(body: B) -> Self {
        Self::first(body, 0).0
    }

    /// Wraps `body` for the first attempt; with the replay handle when it can be replayed
    /// (`max` > 0 and not known to be larger than `max`).
    pub(crate) fn first(body: B, max: usize) -> (Self, Option<Replay<B>>) {
        if body.is_end_stream() {
            return (
                Self {
                    state: State::Empty,
                },
                None,
            );
        }
        let hint = body.size_hint();
        if max == 0 || hint.lower() > max as u64 {
            return (
                Self {
                    state: State::Direct { body },
                },
                None,
            );
        }
        let capture = Arc::new(Mutex::new(Capture {
            body: Some(Box::pin(body)),
            chunks: VecDeque::new(),
            trailers: None,
            kept: 0,
            max,
            overflowed: false,
            current: 0,
            size_hint: hint,
        }));
        let replay = Replay {
            capture: capture.clone(),
        };
        let first = Self {
            state: State::Shared {
                capture,
                attempt: 0,
                next: 0,
            },
        };
        (first, Some(replay))
    }

    /// The body of a request with none.
    pub(crate) fn empty() -> Self {
        Self {
            state: State::Empty,
        }
    }
}

impl<B> Replay<B> {
    /// Whether everything read so far was kept, so another attempt can send it all.
    pub(crate) fn can_replay(&self) -> bool {
        !self
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .overflowed
    }

    /// The body of the next attempt, if everything read so far was kept.
    pub(crate) fn again(&self) -> Option<ReplayBody<B>> {
        let mut c = self.capture.lock().unwrap_or_else(|e| e.into_inner());
        if c.overflowed {
            return None;
        }
        c.current += 1;
        Some(ReplayBody {
            state: State::Shared {
                capture: self.capture.clone(),
                attempt: c.current,
                next: 0,
            },
        })
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().state.project() {
            StateProj::Empty => Poll::Ready(None),
            StateProj::Direct { body } => {
                let frame = std::task::ready!(body.poll_frame(cx));
                Poll::Ready(frame.map(|f| {
                    f.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))
                        .map_err(Into::into)
                }))
            }
            StateProj::Shared {
                capture,
                attempt,
                next,
            } => {
                let mut c = capture.lock().unwrap_or_else(|e| e.into_inner());
                if c.current != *attempt {
                    return Poll::Ready(Some(Err(Superseded.into())));
                }
                // Replay what earlier attempts read.
                if let Some(chunk) = c.chunks.get(*next) {
                    *next += 1;
                    return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
                }
                let Some(body) = c.body.as_mut() else {
                    // Past the data: the trailers once, then the end.
                    if *next == c.chunks.len() && !c.overflowed {
                        *next += 1;
                        let trailers = c.trailers.clone();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    return Poll::Ready(None);
                };
                let frame = match std::task::ready!(body.as_mut().poll_frame(cx)) {
                    None => {
                        c.body = None;
                        return Poll::Ready(None);
                    }
                    Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                    Some(Ok(frame)) => frame,
                };
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        let data = data.copy_to_bytes(data.remaining());
                        if !c.overflowed {
                            c.kept += data.len();
                            if c.kept > c.max {
                                c.overflowed = true;
                                c.chunks = VecDeque::new();
                            } else {
                                c.chunks.push_back(data.clone());
                                *next += 1;
                            }
                        }
                        Frame::data(data)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            c.trailers = Some(trailers.clone());
                            c.body = None;
                            *next += 1;
                            Frame::trailers(trailers)
                        }
                        // Neither data nor trailers: nothing else exists in http-body 1.
                        Err(_) => return Poll::Ready(None),
                    },
                };
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Empty => true,
            State::Direct { body } => body.is_end_stream(),
            State::Shared { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Empty => SizeHint::with_exact(0),
            State::Direct { body } => body.size_hint(),
            State::Shared { capture, .. } => {
                capture.lock().unwrap_or_else(|e| e.into_inner()).size_hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    async fn collect<B>(body: ReplayBody<B>) -> Result<Bytes, BoxError>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        Ok(body.collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn a_kept_body_is_sent_again_whole_even_after_a_partial_read() {
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = ["ab", "cd", "ef"]
            .into_iter()
            .map(|s| Ok(Frame::data(Bytes::from(s))))
            .collect();
        let body = StreamBody::new(futures::stream::iter(chunks));
        let (mut first, replay) = ReplayBody::first(body, 1024);
        let replay = replay.expect("replayable");
        // The first attempt reads one frame and fails.
        let frame = std::future::poll_fn(|cx| Pin::new(&mut first).poll_frame(cx)).await;
        assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), "ab");
        let second = replay.again().unwrap();
        // The old attempt can no longer read.
        let stale = std::future::poll_fn(|cx| Pin::new(&mut first).poll_frame(cx)).await;
        assert!(stale.unwrap().is_err());
        assert_eq!(collect(second).await.unwrap(), "abcdef");
        assert_eq!(collect(replay.again().unwrap()).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_not_replayed() {
        let (body, replay) = ReplayBody::first(Full::new(Bytes::from(vec![7u8; 100])), 64);
        assert!(replay.is_none(), "known to be too large: passed through");
        assert_eq!(collect(body).await.unwrap().len(), 100);

        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..4)
            .map(|_| Ok(Frame::data(Bytes::from(vec![1u8; 30]))))
            .collect();
        let body = StreamBody::new(futures::stream::iter(chunks));
        let (first, replay) = ReplayBody::first(body, 64);
        assert_eq!(collect(first).await.unwrap().len(), 120);
        assert!(replay.unwrap().again().is_none(), "grew past the cap");
    }
}
