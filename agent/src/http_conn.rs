//! One HTTP/1.1 connection of the agent's listeners (the metadata service, the admin
//! listener), held to its deadlines: a new connection's first request head and any request
//! head once its first byte arrived (header timeout), a declared body (body timeout), the
//! wait between kept-alive requests (idle timeout), and a response the client does not read
//! (body timeout again). Closing is lingering: the write side is shut, then what the client
//! still sends is read and discarded for a moment, so a client refused before it finished
//! sending reads the refusal rather than a reset.

use crate::http::{Framing, HttpRequest, framing, parse_request};
use backfill_shared::listener::HttpLimits;
use bytes::BytesMut;
use prometheus_client::encoding::EncodeLabelSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The longest a closing connection keeps reading what the client still sends.
const LINGER: Duration = Duration::from_secs(2);
/// And the most it reads.
const LINGER_BYTES: usize = 64 * 1024;

pub use backfill_shared::listener::Phase;

/// The metrics label of a refused or timed-out connection: which listener, and why.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReason {
    pub listener: String,
    pub reason: String,
}

impl ListenerReason {
    pub fn new(listener: &str, reason: &str) -> ListenerReason {
        ListenerReason {
            listener: listener.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// Why no request (or no response) came of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed, or the socket failed.
    Closed,
    TimedOut(Phase),
    /// Malformed, chunked or larger than allowed: answer 400 and close.
    Bad,
}

/// A connection and the bytes read from it that no request has used yet.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    limits: HttpLimits,
    requests: u64,
    /// The connection's start, then the end of each response.
    idle_since: Instant,
}

impl Conn {
    pub fn new(stream: TcpStream, limits: HttpLimits) -> Conn {
        Conn {
            stream,
            buf: BytesMut::with_capacity(1024),
            limits,
            requests: 0,
            idle_since: Instant::now(),
        }
    }

    /// The next request, read within its deadlines.
    pub async fn next_request(&mut self) -> Result<HttpRequest, End> {
        let l = self.limits;
        let mut first_byte = (!self.buf.is_empty()).then(Instant::now);
        let mut head_done = None;
        loop {
            match framing(&self.buf).map_err(|_| End::Bad)? {
                Framing::Complete(len) => {
                    let raw = self.buf.split_to(len);
                    self.requests += 1;
                    return parse_request(&raw).ok_or(End::Bad);
                }
                Framing::Body => {
                    head_done.get_or_insert_with(Instant::now);
                }
                Framing::Head => {}
            }
            let (deadline, phase) = match (head_done, first_byte) {
                (Some(t), _) => (t + l.body_timeout, Phase::Body),
                (None, Some(t)) => (t + l.header_timeout, Phase::Header),
                (None, None) if self.requests == 0 => {
                    (self.idle_since + l.header_timeout, Phase::Header)
                }
                (None, None) => (self.idle_since + l.idle_timeout, Phase::Idle),
            };
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(1024.max(self.buf.len()));
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(End::TimedOut(phase)),
                Ok(Ok(0) | Err(_)) => return Err(End::Closed),
                Ok(Ok(_)) => {
                    first_byte.get_or_insert_with(Instant::now);
                }
            }
        }
    }

    /// Writes a response, which may not stall longer than the body timeout.
    pub async fn respond(&mut self, bytes: &[u8]) -> Result<(), End> {
        let written = tokio::time::timeout(self.limits.body_timeout, self.stream.write_all(bytes));
        match written.await {
            Err(_) => Err(End::TimedOut(Phase::Send)),
            Ok(Err(_)) => Err(End::Closed),
            Ok(Ok(())) => {
                self.idle_since = Instant::now();
                Ok(())
            }
        }
    }

    /// Closes lingeringly (see the module documentation).
    pub async fn close(mut self) {
        let closing = async {
            let _ = self.stream.shutdown().await;
            let mut buf = [0u8; 8192];
            let mut left = LINGER_BYTES;
            while let Ok(n @ 1..) = self.stream.read(&mut buf).await {
                left = left.saturating_sub(n);
                if left == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, closing).await;
    }
}
