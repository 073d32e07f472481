//! `rbee-store`: the one home of the model-store rules, shared by the agent and the worker.
//!
//! - [`reference`]: what a model reference means (a path, or `hf:ORG/REPO[@REVISION][:FILE]`).
//! - [`files`]: which files a model needs (a GGUF file, or a safetensors directory with its
//!   config and tokenizer) and how big it is.
//! - [`hub`]: the Hugging Face cache layout: resolving `hf:` references, sizes, listing.
//! - [`pull`]: the pull plan (which files to download, how many bytes, the disk check) and the
//!   download itself.
//! - [`local`]: the node's model directories: listing, the "inside the store" rule, and name
//!   resolution (a NAME, file name or REF that `models list` prints).
//! - [`gguf`] and [`estimate`]: a GGUF header reader, and what a worker will hold in memory for
//!   a model (weights as loaded, KV cache, runtime) before it is spawned.
//! - [`device`]: the typed device a worker runs on (`cpu`, `cuda:N`).
//!
//! No async, no network unless a function says it downloads.
#![warn(missing_docs)]

pub mod device;
pub mod error;
pub mod estimate;
pub mod estimate_st;
pub mod files;
pub mod footprint;
pub mod gguf;
pub mod hub;
pub mod local;
pub mod pull;
pub mod reference;

pub use device::{DeviceChoice, DeviceSpec};
pub use error::StoreError;
pub use estimate::{estimate, MemoryEstimate, RunShape};
pub use files::{model_size, ModelFiles};
pub use local::{Found, Store};
pub use pull::{free_bytes, PullPlan};
pub use reference::ModelRef;
