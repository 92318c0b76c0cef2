//! Wire format of the registration protocol, shared by the proxy (this crate)
//! and the node agent.
//!
//! The proxy connects to the agent's unix stream socket and sends one frame,
//! a [`Request`], with its inbound listener attached as `SCM_RIGHTS` ancillary
//! data on the frame's first bytes. The agent answers with one [`Response`]
//! frame and then keeps the connection open: the pod stays enrolled for as long
//! as the connection lives. Either side closing it ends the enrolment.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
//! JSON. Frames longer than [`MAX_FRAME`] are refused.

use crate::{Enrolled, PodInfo, RegisterError};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// Version of this protocol; the agent refuses other versions.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame accepted, in bytes (the JSON body, without the length).
pub const MAX_FRAME: usize = 64 * 1024;

/// First and only frame from the proxy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// The pod the proxy serves.
    pub pod: PodInfo,
}

/// The agent's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The pod is enrolled: capture is on until the connection closes.
    Enrolled(Enrolled),
    /// The agent did not enrol the pod; the text says why.
    Refused {
        /// Human-readable reason.
        reason: String,
    },
}

fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, RegisterError> {
    let body =
        serde_json::to_vec(msg).map_err(|e| RegisterError::Protocol(format!("encoding: {e}")))?;
    if body.len() > MAX_FRAME {
        return Err(RegisterError::Protocol(format!(
            "frame of {} bytes exceeds the limit of {MAX_FRAME}",
            body.len()
        )));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, RegisterError> {
    serde_json::from_slice(body)
        .map_err(|e| RegisterError::Protocol(format!("malformed frame: {e}")))
}

fn check_len(prefix: [u8; 4]) -> Result<usize, RegisterError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(RegisterError::Protocol(format!(
            "frame of {len} bytes exceeds the limit of {MAX_FRAME}"
        )));
    }
    Ok(len)
}

/// Writes one frame (without file descriptors).
pub async fn write_frame<T: Serialize>(
    stream: &mut UnixStream,
    msg: &T,
) -> Result<(), RegisterError> {
    let frame = encode(msg)?;
    stream.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame (without file descriptors). `Ok(None)` on a clean end of
/// stream before the first byte.
pub async fn read_frame<T: for<'de> Deserialize<'de>>(
    stream: &mut UnixStream,
) -> Result<Option<T>, RegisterError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = stream.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(RegisterError::Protocol(
                "connection closed inside a frame".into(),
            ));
        }
        got += n;
    }
    let len = check_len(prefix)?;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| RegisterError::Protocol(format!("connection closed inside a frame: {e}")))?;
    decode(&body).map(Some)
}

/// Sends `request` with `fd` attached (`SCM_RIGHTS`).
pub async fn send_request(
    stream: &mut UnixStream,
    request: &Request,
    fd: BorrowedFd<'_>,
) -> Result<(), RegisterError> {
    let frame = encode(request)?;
    let raw: RawFd = stream.as_raw_fd();
    let fds = [fd.as_raw_fd()];
    let sent = loop {
        stream.writable().await?;
        let res = stream.try_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(&frame)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(raw, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(std::io::Error::from)
        });
        match res {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // The descriptor travelled with the first bytes; the rest is plain data.
    stream.write_all(&frame[sent..]).await?;
    Ok(())
}

/// Receives a [`Request`] and the descriptor attached to it (agent side).
/// A frame that arrives without a descriptor yields `None` for it; extra
/// descriptors are closed.
pub async fn recv_request(
    stream: &mut UnixStream,
) -> Result<(Request, Option<OwnedFd>), RegisterError> {
    let raw = stream.as_raw_fd();
    let mut prefix = [0u8; 4];
    let mut fd: Option<OwnedFd> = None;
    let got = loop {
        stream.readable().await?;
        let res = stream.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut prefix)];
            let mut space = nix::cmsg_space!([RawFd; 4]);
            let msg = recvmsg::<()>(raw, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
                .map_err(std::io::Error::from)?;
            let mut received = Vec::new();
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(list) = c {
                    received.extend(list);
                }
            }
            Ok((msg.bytes, received))
        });
        match res {
            Ok((n, received)) => {
                for r in received {
                    // SAFETY: the kernel just installed `r` in our table for us
                    // (SCM_RIGHTS); nothing else owns it.
                    #[allow(unsafe_code)]
                    let owned = unsafe { OwnedFd::from_raw_fd(r) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
                break n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if got == 0 {
        return Err(RegisterError::ClosedBeforeRequest);
    }
    if got < 4 {
        stream.read_exact(&mut prefix[got..]).await.map_err(|e| {
            RegisterError::Protocol(format!("connection closed inside a frame: {e}"))
        })?;
    }
    let len = check_len(prefix)?;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| RegisterError::Protocol(format!("connection closed inside a frame: {e}")))?;
    let request: Request = decode(&body)?;
    Ok((request, fd))
}
