//! Helpers shared by the fuzz targets in `fuzz_targets/`: one tokio runtime
//! per process, and a reader that hands the input over in the chunk sizes
//! the input itself chooses (so parsers that stop "as soon as the bytes
//! decide" see every split of their input).

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// A current-thread runtime with time and I/O, built once.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// Reads `data` in chunks: each chunk's length is taken from the input's
/// first bytes (one byte per chunk, 1..=256 bytes each), then the stream
/// ends (EOF).
#[derive(Debug)]
pub struct Chunked<'a> {
    sizes: &'a [u8],
    data: &'a [u8],
}

impl<'a> Chunked<'a> {
    /// The first byte says how many chunk-size bytes follow (at most 8);
    /// the rest is the payload.
    pub fn new(input: &'a [u8]) -> Self {
        let Some((&n, rest)) = input.split_first() else {
            return Self {
                sizes: &[],
                data: &[],
            };
        };
        let n = usize::from(n % 9).min(rest.len());
        let (sizes, data) = rest.split_at(n);
        Self { sizes, data }
    }

    /// The payload (everything the reader will return).
    pub fn payload(&self) -> &'a [u8] {
        self.data
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let size = match self.sizes.split_first() {
            Some((&s, rest)) => {
                self.sizes = rest;
                usize::from(s) + 1
            }
            None => self.data.len(),
        };
        let n = size.min(self.data.len()).min(buf.remaining());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}
