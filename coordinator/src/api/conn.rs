//! One HTTP connection's clock: which deadline it is under (the first request's head, a
//! request's head, the body, idle keep-alive, a response the client does not read) and the
//! request and response bodies that keep it informed.
//!
//! The IO wrapper ([`Watched`]) notes bytes read while no request is in flight (a request's
//! head is arriving) and writes that stall; the service wrapper counts requests in flight from
//! the moment hyper hands one over until its response body is dropped. [`Activity::expired`]
//! resolves when the deadline of the current phase passes.
//!
//! HTTP/2 early refusals: a handler may answer without reading the whole request body (413
//! once the limit is passed, 403 before reading). h2 then resets the stream with NO_ERROR
//! once the response is sent (RFC 9113 §8.1), which is correct, but clients in the field do
//! not all take it: curl 7.x reports "(92) Stream error in the HTTP/2 framing layer" and drops
//! the response it was sent. So the unread body is parked until the response has gone, then
//! read and discarded to its end (at most [`DRAIN_BYTES`], within the body timeout): the
//! client finishes its upload and reads the status on a stream that closes cleanly. A body
//! larger than that still gets the NO_ERROR reset.

use backfill_shared::listener::HttpLimits;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// The most of an unread HTTP/2 request body read and discarded after an early response.
pub const DRAIN_BYTES: u64 = 16 << 20;

pub use backfill_shared::listener::Phase;

#[derive(Debug)]
struct State {
    in_flight: usize,
    requests: u64,
    h2: bool,
    idle_since: Instant,
    read_since_idle: Option<Instant>,
    write_stalled_since: Option<Instant>,
    /// Responses being sent, and when one last moved: HTTP/2 buffers a response the client
    /// gives no window for without the socket ever stalling, so progress is watched here.
    responses: usize,
    response_progress: Instant,
}

/// Told of every deadline that passes (a metrics counter).
pub type OnTimeout = Arc<dyn Fn(Phase) + Send + Sync>;

/// What one connection is doing, as far as its deadlines go.
pub struct Activity {
    limits: HttpLimits,
    state: Mutex<State>,
    changed: Notify,
    on_timeout: Option<OnTimeout>,
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity")
            .field("limits", &self.limits)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Activity {
    pub fn new(limits: HttpLimits, on_timeout: Option<OnTimeout>) -> Arc<Activity> {
        Arc::new(Activity {
            limits,
            on_timeout,
            state: Mutex::new(State {
                in_flight: 0,
                requests: 0,
                h2: false,
                idle_since: Instant::now(),
                read_since_idle: None,
                write_stalled_since: None,
                responses: 0,
                response_progress: Instant::now(),
            }),
            changed: Notify::new(),
        })
    }

    /// Counts a deadline that passed.
    pub fn timed_out(&self, phase: Phase) {
        if let Some(f) = &self.on_timeout {
            f(phase);
        }
    }

    fn update<T>(&self, f: impl FnOnce(&mut State) -> (T, bool)) -> T {
        let (v, notify) = f(&mut self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
        if notify {
            self.changed.notify_one();
        }
        v
    }

    /// The earliest deadline in force and its phase; `None` while requests are in flight and
    /// writes flow (a request's body has its own deadline, see [`RequestBody`]).
    fn deadline(&self) -> Option<(Instant, Phase)> {
        let l = &self.limits;
        self.update(|s| {
            let stalled = s.write_stalled_since.map(|t| t + l.body_timeout);
            let unsent = (s.responses > 0).then(|| s.response_progress + l.body_timeout);
            let send = match (stalled, unsent) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(|t| (t, Phase::Send));
            let waiting = if s.in_flight > 0 {
                None
            } else if s.requests == 0 {
                Some((s.idle_since + l.header_timeout, Phase::Header))
            } else {
                match s.read_since_idle {
                    // HTTP/2 sends frames of its own between requests (window updates,
                    // pings): only HTTP/1 bytes between requests are a request's head.
                    Some(t) if !s.h2 => Some((t + l.header_timeout, Phase::Header)),
                    _ => Some((s.idle_since + l.idle_timeout, Phase::Idle)),
                }
            };
            let d = match (send, waiting) {
                (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
                (a, b) => a.or(b),
            };
            (d, false)
        })
    }

    /// Resolves when the deadline of the phase the connection is in passes.
    pub async fn expired(&self) -> Phase {
        loop {
            let changed = self.changed.notified();
            match self.deadline() {
                None => changed.await,
                Some((at, phase)) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(at) => {
                            if self.deadline().is_some_and(|(d, _)| d <= Instant::now()) {
                                return phase;
                            }
                        }
                    }
                }
            }
        }
    }

    /// A request handed to the service: in flight until the guard drops.
    pub fn begin(self: &Arc<Self>, h2: bool) -> InFlight {
        self.update(|s| {
            s.in_flight += 1;
            s.requests += 1;
            s.h2 |= h2;
            s.read_since_idle = None;
            ((), true)
        });
        InFlight {
            activity: self.clone(),
            parked: Arc::new(Mutex::new(None)),
        }
    }

    fn read(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.update(|s| {
            if s.in_flight == 0 && s.read_since_idle.is_none() {
                s.read_since_idle = Some(Instant::now());
                ((), true)
            } else {
                ((), false)
            }
        });
    }

    /// A response began, or moved (`started`: it began).
    fn response(&self, started: bool) {
        self.update(|s| {
            s.responses += usize::from(started);
            s.response_progress = Instant::now();
            ((), started)
        });
    }

    /// A response was sent, or given up.
    fn response_done(&self) {
        self.update(|s| {
            s.responses = s.responses.saturating_sub(1);
            ((), true)
        });
    }

    fn write(&self, stalled: bool) {
        self.update(|s| match (stalled, s.write_stalled_since) {
            (true, None) => {
                s.write_stalled_since = Some(Instant::now());
                ((), true)
            }
            (false, Some(_)) => {
                s.write_stalled_since = None;
                ((), true)
            }
            _ => ((), false),
        });
    }
}

/// One request in flight; the connection is idle again once every guard has dropped.
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<Activity>,
    /// An HTTP/2 request body the handler let go of, held until the response is sent.
    parked: Arc<Mutex<Option<Incoming>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The response has been sent: read what is left of the request body (see the module
        // documentation), or let h2 reset the stream (NO_ERROR) where no runtime is at hand.
        let parked = self
            .parked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let (Some(body), Ok(rt)) = (parked, tokio::runtime::Handle::try_current()) {
            rt.spawn(drain(body, self.activity.limits.body_timeout));
        }
        self.activity.update(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
                s.read_since_idle = None;
            }
            ((), true)
        });
    }
}

/// Reads `body` to its end, at most [`DRAIN_BYTES`] and for at most `timeout`; dropping it
/// then resets the stream if it has not ended.
async fn drain(mut body: Incoming, timeout: std::time::Duration) {
    let mut left = DRAIN_BYTES;
    let read = async {
        while let Some(Ok(frame)) =
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, read).await;
}

/// The request body did not arrive within the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(std::time::Duration);

/// The request body as handlers see it: it fails once the body timeout has passed since the
/// request arrived, and (HTTP/2) it is parked rather than dropped.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    deadline: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
    done: bool,
    park: Option<Arc<Mutex<Option<Incoming>>>>,
}

impl RequestBody {
    /// `park`: keep the body until `guard` drops (HTTP/2).
    pub fn new(inner: Incoming, guard: &InFlight, park: bool) -> RequestBody {
        let timeout = guard.activity.limits.body_timeout;
        RequestBody {
            done: inner.is_end_stream(),
            inner: Some(inner),
            deadline: Box::pin(tokio::time::sleep(timeout)),
            activity: guard.activity.clone(),
            park: park.then(|| guard.parked.clone()),
        }
    }
}

impl Body for RequestBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(r)) => Poll::Ready(Some(r.map_err(Into::into))),
            Poll::Pending if this.done => Poll::Pending,
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                this.done = true;
                this.activity.timed_out(Phase::Body);
                let timeout = this.activity.limits.body_timeout;
                Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // A body that ran out of time is not drained: the client had its chance.
        if let (Some(slot), Some(body), false) = (&self.park, self.inner.take(), self.done)
            && !body.is_end_stream()
        {
            *slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(body);
        }
    }
}

/// A response body carrying its request's [`InFlight`] guard. While it lives, each frame it
/// yields is progress; one that makes none for the body timeout (a client that opens no flow
/// control window) ends the connection.
#[derive(Debug)]
pub struct ResponseBody<B> {
    inner: B,
    in_flight: InFlight,
}

impl<B> ResponseBody<B> {
    pub fn new(inner: B, in_flight: InFlight) -> ResponseBody<B> {
        in_flight.activity.response(true);
        ResponseBody { inner, in_flight }
    }
}

impl<B> Drop for ResponseBody<B> {
    fn drop(&mut self) {
        self.in_flight.activity.response_done();
    }
}

impl<B: Body + Unpin> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &r {
            self.in_flight.activity.response(false);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long a closed connection keeps reading what the client still sends.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// A connection's IO, reporting reads and stalled writes to its [`Activity`]. When dropped
/// it closes in the lingering way: the write side is shut first, then what the client still
/// sends is read and discarded for a moment (at most [`LINGER`] and [`DRAIN_BYTES`]). Closing
/// with unread bytes would send a reset, and a client still uploading (an HTTP/1.1 POST
/// refused with 413 before its body was read) would lose the response it has not read yet.
#[derive(Debug)]
pub struct Watched<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    io: Option<I>,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Watched<I> {
    pub fn new(io: I, activity: Arc<Activity>) -> Watched<I> {
        Watched {
            io: Some(io),
            activity,
        }
    }

    fn io(&mut self) -> io::Result<Pin<&mut I>> {
        self.io
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    fn wrote<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.activity.write(r.is_pending());
        r
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Watched<I> {
    fn drop(&mut self) {
        if let (Some(io), Ok(rt)) = (self.io.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(linger(io));
        }
    }
}

async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let closing = async {
        let _ = io.shutdown().await;
        let mut buf = [0u8; 16 * 1024];
        let mut left = DRAIN_BYTES;
        while let Ok(n @ 1..) = io.read(&mut buf).await {
            left = left.saturating_sub(n as u64);
            if left == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, closing).await;
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = self.io()?.poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.activity
                .read(buf.filled().len().saturating_sub(before));
        }
        r
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = self.io()?.poll_write(cx, buf);
        self.wrote(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = self.io()?.poll_write_vectored(cx, bufs);
        self.wrote(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = self.io()?.poll_flush(cx);
        self.wrote(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io()?.poll_shutdown(cx)
    }
}
