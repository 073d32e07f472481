//! `rbee-worker`: one process serving one model with candle.
//!
//! Owns model loading (GGUF, safetensors directories, `hf:` references through the Hugging Face
//! cache, all resolved by `rbee-store`), tokenization, sampling, streaming generation with
//! cancellation, and the stdio side of the agent ⇄ worker protocol. It must not know about
//! sessions, other workers or the network: its parent (the agent) is its whole world.
//!
//! - [`error`]: why a model could not be loaded.
//! - [`chat`]: conversations rendered with the model's own chat template.
//! - [`load`]: reference → files → device → tokenizer and weights.
//! - [`generate`]: the generation loop (sampling, detokenization, stop sequences, timings).
//! - [`serve`]: the stdio protocol (reader, generator and heartbeat threads).
#![warn(missing_docs)]

pub mod chat;
pub mod error;
pub mod generate;
pub mod load;
pub mod serve;

pub use error::LoadError;
pub use generate::{Engine, GenerateError, StopCheck};
pub use rbee_store::ModelRef;
