//! Any byte string fed to the frame decoder yields a frame or a typed error,
//! never a panic; a frame that decodes re-encodes to the same bytes.
#![no_main]

use _core::wire::{decode_frame, encode_frame, Header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Header::peek_len(data);
    if let Ok((header, payload)) = decode_frame(data, 1 << 24) {
        let again = encode_frame(&header, payload).expect("a decoded header re-encodes");
        assert_eq!(again, data);
    }
});
