//! HTTP/1.1 read by hand, for the open-loop load generator and for test servers that must control their
//! connections themselves (when to close, what to hold back).

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

pub(crate) fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads from `s` into `buf` (which may already hold bytes) until `buf` holds a whole message head; returns
/// where the head ends and its text. An `UnexpectedEof` error if the peer closes first.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<(usize, String)> {
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if s.read_buf(buf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the head"));
        }
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("head not UTF-8"))?.to_owned();
    Ok((end, head))
}

/// Reads from `s` until `buf` holds at least `len` bytes.
pub async fn read_to<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    while buf.len() < len {
        if s.read_buf(buf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed in the body"));
        }
    }
    Ok(())
}

/// The value of the header `name` (any case) in a message head.
pub fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The `Content-Length` of a message head (0 when absent).
pub fn content_length(head: &str) -> io::Result<usize> {
    header(head, "content-length").map_or(Ok(0), |v| v.parse().map_err(|_| bad("content-length")))
}
