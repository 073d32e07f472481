//! GGUF headers from untrusted model files: arbitrary bytes through the worker's header guard
//! (`rbee_worker::load::guard`, compiled here from its own source file), and every header it
//! accepts through candle's GGUF parser, as `rbee-worker` loads a model.
//!
//! Properties: the guard never panics; what it accepts, candle parses without a panic (alignment
//! 0 used to divide by zero); the metadata of an accepted header costs no more memory than the
//! guard's limit for a file of that size (byte arrays used to take 32× the file).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../worker/src/load/guard.rs"]
#[allow(dead_code)]
mod guard;

fuzz_target!(|data: &[u8]| {
    let Ok(facts) = guard::check_bytes(data) else { return };
    assert!(facts.memory_bytes <= guard::metadata_limit(data.len() as u64));
    let parsed = candle_core::quantized::gguf_file::Content::read(&mut std::io::Cursor::new(data));
    if let Ok(content) = parsed {
        assert!(content.metadata.len() as u64 <= facts.metadata);
        assert!(content.tensor_infos.len() as u64 <= facts.tensors);
    }
});
