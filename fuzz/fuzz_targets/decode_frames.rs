//! Feeds arbitrary bytes to the frame decoder, in arbitrary chunk sizes. The decoder must
//! never panic, and every frame it returns must re-encode and decode to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use missive_proto::{encode_to_vec, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // First byte picks the chunking, so split frames are explored too.
    let chunk = usize::from(data[0]).max(1);
    let mut decoder = FrameDecoder::new(64 * 1024);
    for piece in data[1..].chunks(chunk) {
        decoder.feed(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let wire = encode_to_vec(&frame).expect("a decoded frame re-encodes");
                    let mut again = FrameDecoder::new(1 << 24);
                    again.feed(&wire);
                    assert_eq!(again.next_frame().expect("re-decodes"), Some(frame));
                }
                Ok(None) => break,
                Err(_) => return, // a bad frame closes the connection
            }
        }
    }
});
