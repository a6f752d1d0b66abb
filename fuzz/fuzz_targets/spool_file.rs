//! Feeds arbitrary bytes to the spool file reader, as recovery reads what a crash or a
//! disk fault left in `queue/`: the answer is a message or a clean `Corrupt`, never a
//! panic, and never an allocation of what a damaged length field claims.
//!
//! Run: `cargo +nightly fuzz run spool_file` (from `fuzz/`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_spool::SpoolError;

fuzz_target!(|data: &[u8]| {
    match portcullis_spool::file::parse_spool_file(data) {
        Ok((entry, message)) => {
            // What is accepted is whole: the message is the size the metadata says.
            assert_eq!(message.len() as u64, entry.size);
            assert!(message.len() <= data.len());
        }
        Err(SpoolError::Corrupt { .. }) => {}
        Err(other) => panic!("a damaged file must be Corrupt, not {other}"),
    }
});
