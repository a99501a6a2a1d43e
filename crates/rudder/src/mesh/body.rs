//! The response body: releases the request's in-flight count when the body ends, fails or
//! is dropped, so least-loaded balancing sees streams that are still running, and records
//! a stream cut mid-body as a failure of its endpoint (through the same
//! [`Attempt`] as every other outcome, so an ejection it causes is logged and counted).

use std::pin::Pin;
use std::task::{Context, Poll};

use super::routed::Attempt;
use http_body::{Body, Frame, SizeHint};

use super::ext::{Target, Whence};

pin_project_lite::pin_project! {
    /// A response body from the inner service, holding the request's place on its endpoint
    /// until the body is finished or dropped.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        attempt: Option<Attempt>,
        target: Option<Whence>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, attempt: Option<Attempt>, target: Option<Whence>) -> Self {
        Self {
            inner,
            attempt,
            target,
        }
    }

    /// Where the Mesh sent the request (`None` when it passed through unchanged). Made
    /// when asked for, from the Service and the endpoint's address the body keeps, so a
    /// request that never asks pays nothing; each call formats the endpoint's address
    /// (one allocation).
    pub fn target(&self) -> Option<Target> {
        self.target.as_ref().map(Whence::target)
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body; the endpoint's in-flight count is released.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            None => drop(this.attempt.take()),
            Some(Err(_)) => {
                // A stream cut mid-body counts against the endpoint.
                if let Some(attempt) = this.attempt.take() {
                    attempt.failed();
                }
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
