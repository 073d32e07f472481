//! Pulling `hf:` models into the node's Hugging Face cache, as progress events for subscribed
//! sessions. What a pull needs, the disk check and the download itself are `rbee_store`'s
//! ([`rbee_store::PullPlan`]); this module only paces its progress onto the event channel.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rbee_proto::session::Event;
use rbee_proto::ProtoError;
use rbee_store::pull::PullProgress;
use rbee_store::PullPlan;
use tokio::sync::broadcast;

/// How often progress events go out while bytes arrive.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// What a finished pull reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Pulled {
    /// The GGUF file, or the snapshot directory of a safetensors model.
    pub path: PathBuf,
    /// Bytes fetched by this pull (0 when the cache had everything).
    pub downloaded_bytes: u64,
}

/// Download what `model` needs that the cache lacks, refusing up front when it does not fit on
/// disk. Blocking: run it on a blocking thread.
pub fn pull(model: &str, events: &broadcast::Sender<Event>) -> Result<Pulled, ProtoError> {
    let plan = PullPlan::new(model)?;
    plan.check_disk()?;
    let downloaded_bytes = plan.missing_bytes();
    let mut last_sent: Option<Instant> = None;
    let mut report = |p: PullProgress| {
        // The last report (no file left) always goes out; the others at most every 250 ms.
        let last = p.file.is_empty();
        if !last && last_sent.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        last_sent = Some(Instant::now());
        let _ = events.send(Event::PullProgress {
            model: model.to_string(),
            file: p.file,
            downloaded_bytes: p.downloaded_bytes,
            total_bytes: p.total_bytes,
        });
    };
    let files = plan.fetch(&mut report)?;
    Ok(Pulled {
        path: files.path().to_path_buf(),
        downloaded_bytes,
    })
}
