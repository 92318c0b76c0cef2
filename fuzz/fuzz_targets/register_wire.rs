//! The registration wire format (`ebpf/register/src/wire.rs`) as the node
//! agent reads it from any local process: a length-prefixed JSON frame on a
//! unix stream, then the checks of the pod it names (`PodInfo::validate`).
//! Also the proxy side's read of the agent's answer. Frames over MAX_FRAME
//! are refused before anything is allocated for them.
#![no_main]

use conduit_fuzz::runtime;
use conduit_register::wire::{self, MAX_FRAME, Response};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

async fn feed(input: &[u8]) -> UnixStream {
    let (mut tx, rx) = UnixStream::pair().expect("socketpair");
    let data = input.to_vec();
    tokio::spawn(async move {
        // The reader may stop early (bad length): ignore the broken pipe.
        let _ = tx.write_all(&data).await;
    });
    rx
}

fuzz_target!(|input: &[u8]| {
    runtime().block_on(async {
        let mut rx = feed(input).await;
        match wire::recv_request(&mut rx).await {
            Ok((request, fd)) => {
                assert!(fd.is_none(), "no descriptor was sent");
                assert!(input.len() >= 4);
                let len = u32::from_be_bytes([input[0], input[1], input[2], input[3]]) as usize;
                assert!(len <= MAX_FRAME);
                let _ = request.pod.validate();
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
        let mut rx = feed(input).await;
        if let Ok(Some(Response::Refused { reason })) = wire::read_frame::<Response>(&mut rx).await
        {
            let _ = reason.len();
        }
    });
});
