//! `rbee-worker`: one process serving one model with candle.
//!
//! Owns model resolution and loading (GGUF, safetensors directories, `hf:` references through the
//! Hugging Face cache), tokenization, sampling, streaming generation with cancellation, and the
//! stdio side of the agent ⇄ worker protocol. It must not know about sessions, other workers or
//! the network: its parent (the agent) is its whole world.

pub mod detok;
pub mod device;
pub mod engine;
pub mod model;
pub mod serve;
pub mod tokenizer;

pub use engine::{Engine, GenerateError, StopCheck};
pub use model::{LoadError, ModelRef};
