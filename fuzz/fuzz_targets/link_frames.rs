//! The agent link's receive path: bytes from the TLS stream, arriving in arbitrary pieces, cut
//! into frames by `protocol::codec()` and decoded by `protocol::decode` as either side's
//! messages. Nothing may panic; a frame longer than `MAX_FRAME_BYTES` is an error; whatever
//! decodes encodes again to bytes that decode to the same encoding (no lossy or ambiguous
//! message, NaN perf factors included, which is why encodings are compared, not values).
#![no_main]

use backfill_shared::protocol::{self, AgentMessage, CoordinatorMessage, MAX_FRAME_BYTES};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::Decoder;

fn round_trip<T: Serialize + DeserializeOwned>(frame: &BytesMut) {
    let Ok(msg) = protocol::decode::<T>(frame) else {
        return;
    };
    let once = protocol::encode(&msg).expect("a decoded message encodes");
    let again: T = protocol::decode(&BytesMut::from(&once[..])).expect("its encoding decodes");
    let twice = protocol::encode(&again).expect("and encodes again");
    assert_eq!(once, twice, "decode(encode(m)) changed the message");
}

fn check(frame: &BytesMut) {
    assert!(
        frame.len() <= MAX_FRAME_BYTES,
        "a frame over the limit got through"
    );
    round_trip::<AgentMessage>(frame);
    round_trip::<CoordinatorMessage>(frame);
}

fuzz_target!(|data: &[u8]| {
    // The first byte chooses how the stream is cut into reads (1 to 256 bytes each).
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let mut codec = protocol::codec();
    let mut buf = BytesMut::new();
    for chunk in stream.chunks(usize::from(step) + 1) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => check(&frame),
                Ok(None) => break,
                // Both sides close the link on a framing error.
                Err(_) => return,
            }
        }
    }
    if let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
        check(&frame);
    }
});
