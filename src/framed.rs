//! Reading and writing whole frames over any async byte stream, each step under a timeout.
//!
//! The reader waits for the first byte of a frame for as long as the caller allows (the idle or
//! handshake timeout), then gives the rest of the frame `frame_timeout` to arrive: a peer that trickles
//! bytes cannot hold a connection (and its buffer) forever. The header is validated before the body
//! buffer is sized, so the allocation is bounded by `max_frame_bytes`.

use std::future::Future;
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use inferd_proto::{FrameError, FrameHeader, HEADER_LEN};

/// Why no frame was read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection between frames.
    Closed,
    /// The peer closed the connection or failed in the middle of a frame.
    Io(std::io::Error),
    /// The frame did not arrive in time.
    Timeout,
    /// The header was refused.
    Frame(FrameError),
}

/// Runs `fut` for at most `limit`; `None` if the time ran out first.
pub async fn timeout<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        async_io::Timer::after(limit).await;
        None
    })
    .await
}

/// Waits (with no time limit of its own) for the first byte of the next frame.
///
/// # Errors
/// [`ReadError::Closed`] on a clean end of stream, [`ReadError::Io`] otherwise.
pub async fn first_byte<R: AsyncRead + Unpin>(r: &mut R) -> Result<u8, ReadError> {
    let mut b = [0u8; 1];
    match r.read(&mut b).await {
        Ok(0) => Err(ReadError::Closed),
        Ok(_) => Ok(b[0]),
        Err(e) => Err(ReadError::Io(e)),
    }
}

/// Reads the rest of a frame whose first byte is `first`, within `limit`, into a new buffer.
///
/// # Errors
/// [`ReadError::Frame`] for a refused header (nothing more is read), [`ReadError::Timeout`],
/// [`ReadError::Io`] for an end of stream inside the frame.
pub async fn rest_of_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    first: u8,
    max_body: u32,
    limit: Duration,
) -> Result<Vec<u8>, ReadError> {
    let read = async {
        let mut header = [0u8; HEADER_LEN];
        header[0] = first;
        r.read_exact(&mut header[1..])
            .await
            .map_err(ReadError::Io)?;
        let h = FrameHeader::decode(&header, max_body).map_err(ReadError::Frame)?;
        // Bounded by max_body, checked just above.
        let mut body = vec![0u8; h.body_len as usize];
        r.read_exact(&mut body).await.map_err(ReadError::Io)?;
        Ok(body)
    };
    timeout(limit, read)
        .await
        .unwrap_or(Err(ReadError::Timeout))
}

/// Writes one encoded frame and flushes it, within `limit`.
///
/// # Errors
/// The I/O error, or `TimedOut`.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    let write = async {
        w.write_all(frame).await?;
        w.flush().await
    };
    timeout(limit, write).await.unwrap_or_else(|| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        ))
    })
}
