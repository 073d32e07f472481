//! The generation loop: prompt → streamed text, with sampling, stop sequences, cancellation and
//! timings.
//!
//! - [`sampler`]: the next token from the logits.
//! - [`detok`]: tokens to whole characters, stop sequences held back and cut.
//! - [`usage`]: timings to `Usage`.
use batch::{Event, Job, Scheduler};
use candle_core::{DType, Tensor};
use rbee_proto::{FinishReason, RequestId, SamplingParams, Usage};

use crate::chat::ChatMessage;
use crate::load::llama::{Piece, SeqCache};
use crate::load::{LoadedModel, Network};

pub mod batch;
pub mod detok;
pub mod sampler;
pub mod usage;

/// Why generation was interrupted from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// The client cancelled the request.
    Cancelled,
    /// The request's deadline passed.
    DeadlineExceeded,
}

/// Checked before every token; `Some` stops the loop.
pub type StopCheck<'a> = &'a dyn Fn() -> Option<Interrupt>;

/// Why a request produced no (complete) answer.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The prompt leaves no room in the context for even one token.
    #[error("prompt has {prompt} tokens but the context holds {context} (and at least one must be generated)")]
    PromptTooLong {
        /// Tokens of the prompt.
        prompt: usize,
        /// The model's context length.
        context: usize,
    },
    /// Nothing to start from.
    #[error("prompt is empty")]
    EmptyPrompt,
    /// Stopped from outside, with the usage up to then.
    #[error("{}", interrupted(*.0, .1))]
    Interrupted(Interrupt, Usage),
    /// The sampling parameters (or the prompt text) are invalid.
    #[error("invalid parameters: {0}")]
    BadParams(String),
    /// candle failed mid-run.
    #[error("model error: {0}")]
    Model(String),
    /// A chat request to a model without a usable chat template (the message says why).
    #[error("cannot chat: {0}")]
    NoChatTemplate(String),
    /// The model's chat template refused or failed on this conversation.
    #[error("{0}")]
    Template(String),
}

/// An interruption in words, with how far it got and, for a deadline, what gives it more time.
fn interrupted(why: Interrupt, usage: &Usage) -> String {
    let n = usage.generated_tokens;
    match why {
        Interrupt::Cancelled => format!("cancelled after {n} generated tokens"),
        Interrupt::DeadlineExceeded => format!(
            "deadline passed after {n} generated tokens; give the request more time \
             (rbee-tui --timeout, the request's timeout) or ask for fewer tokens"
        ),
    }
}

impl GenerateError {
    /// The wire code the agent sees.
    pub fn code(&self) -> rbee_proto::ErrorCode {
        use rbee_proto::ErrorCode;
        match self {
            GenerateError::PromptTooLong { .. } => ErrorCode::PromptTooLong,
            GenerateError::EmptyPrompt
            | GenerateError::BadParams(_)
            | GenerateError::NoChatTemplate(_)
            | GenerateError::Template(_) => ErrorCode::BadRequest,
            GenerateError::Interrupted(Interrupt::Cancelled, _) => ErrorCode::Cancelled,
            GenerateError::Interrupted(Interrupt::DeadlineExceeded, _) => {
                ErrorCode::DeadlineExceeded
            }
            GenerateError::Model(_) => ErrorCode::Internal,
        }
    }
}

fn model_err(e: candle_core::Error) -> GenerateError {
    GenerateError::Model(e.to_string())
}

/// Prompt tokens read per step by default. On SmolLM2 (one thread, 1,024-token prompt) chunks of
/// 128, 256 and 512 read equally fast (388–461 vs 369–381 tok/s, alternating); smaller chunks let
/// streams decoding beside a long prompt advance more often and let prefix reuse keep more of a
/// history (it ends on a chunk boundary).
pub const DEFAULT_CHUNK: usize = 256;

/// One sequence's share of a step: its slot, new tokens, their first position, and whether
/// they are prompt tokens.
struct Work<'t> {
    slot: usize,
    tokens: &'t [u32],
    pos: usize,
    prompt: bool,
}

/// One sequence's place in the engine: its KV cache and the tokens that cache holds.
#[derive(Default)]
struct Slot {
    cache: SeqCache,
    tokens: Vec<u32>,
    /// Step at which its last sequence ended (least recently used slots are taken first).
    freed: u64,
}

/// A loaded model plus the loop that drives it.
pub struct Engine {
    /// The model, owned by the one thread that generates.
    pub model: LoadedModel,
    slots: Vec<Slot>,
    /// Most prompt tokens read per step.
    pub chunk: usize,
}

impl Engine {
    /// An engine for `model` serving one sequence at a time.
    pub fn new(model: LoadedModel) -> Self {
        Self::with_parallel(model, 1)
    }

    /// An engine for `model` serving up to `parallel` sequences at once when its network has a
    /// batched forward (dense llama, qwen2, qwen3 GGUF), one otherwise.
    pub fn with_parallel(model: LoadedModel, parallel: usize) -> Self {
        // Networks without the batched forward read a prompt in one pass, as they always did.
        let (n, chunk) = if Self::batches(&model) {
            (parallel.max(1), DEFAULT_CHUNK)
        } else {
            (1, usize::MAX)
        };
        let mut model = model;
        model.summary.parallel = n as u32;
        Self {
            model,
            slots: (0..n).map(|_| Slot::default()).collect(),
            chunk,
        }
    }

    /// Whether `model`'s network runs several sequences in one forward pass.
    pub fn batches(model: &LoadedModel) -> bool {
        matches!(model.network, Network::Llama(_))
    }

    /// Sequences served at once.
    pub fn parallel(&self) -> usize {
        self.slots.len()
    }

    /// Tokens one sequence may hold (prompt and answer).
    pub fn context(&self) -> usize {
        self.model.summary.context_length as usize
    }

    /// A free slot for `prompt` (slots in `busy` are taken) and how many of its first tokens
    /// that slot's cache already holds; the cache is cut to that prefix. Without a batched
    /// network the one slot starts afresh.
    fn claim_slot(
        &mut self,
        prompt: &[u32],
        busy: &[usize],
    ) -> candle_core::Result<(usize, usize)> {
        if !Self::batches(&self.model) {
            self.model.reset()?;
            return Ok((0, 0));
        }
        let shared = |a: &[u32]| a.iter().zip(prompt).take_while(|(x, y)| x == y).count();
        let best = (0..self.slots.len())
            .filter(|i| !busy.contains(i))
            .max_by_key(|&i| {
                (
                    shared(&self.slots[i].tokens),
                    std::cmp::Reverse(self.slots[i].freed),
                )
            })
            .ok_or_else(|| candle_core::Error::msg("no free slot"))?;
        // At least the prompt's last token is read again: its logits start the answer. The kept
        // prefix ends on a chunk boundary, so the rest is cut into the very chunks a cold start
        // reads (gemm's rounding depends on a chunk's rows): the answer is the same, bit for bit.
        let keep = shared(&self.slots[best].tokens).min(prompt.len() - 1);
        let keep = keep - keep % self.chunk.max(1);
        let slot = &mut self.slots[best];
        slot.cache.truncate(keep);
        slot.tokens.truncate(keep);
        Ok((best, keep))
    }

    /// A sequence left `slot`, whose cache holds `tokens`.
    fn release(&mut self, slot: usize, tokens: &[u32], tick: u64) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.tokens = tokens.to_vec();
            s.freed = tick;
            if tokens.is_empty() {
                s.cache.truncate(0);
            }
        }
    }

    /// One forward pass over `(slot, new tokens, position)` pieces; the logits of each piece's
    /// last token (`[pieces, vocab]`, f32).
    fn forward_pieces(&mut self, work: &[Work<'_>]) -> candle_core::Result<Tensor> {
        let Network::Llama(net) = &mut self.model.network else {
            let [Work { tokens, pos, .. }] = work else {
                candle_core::bail!("this network runs one sequence at a time");
            };
            return self.model.forward(tokens, *pos)?.unsqueeze(0);
        };
        let mut caches: Vec<Option<&mut SeqCache>> =
            self.slots.iter_mut().map(|s| Some(&mut s.cache)).collect();
        let mut pieces = Vec::with_capacity(work.len());
        for w in work {
            let cache = caches
                .get_mut(w.slot)
                .and_then(Option::take)
                .ok_or_else(|| candle_core::Error::msg("slot used twice in one step"))?;
            pieces.push(Piece {
                cache,
                tokens: w.tokens,
                pos: w.pos,
                prompt: w.prompt,
            });
        }
        net.forward_batch(&mut pieces)?.to_dtype(DType::F32)
    }

    /// Generate from `prompt` as it is (completion), handing each piece of text to `emit` as
    /// soon as it is final.
    pub fn generate(
        &mut self,
        prompt: &str,
        params: &SamplingParams,
        should_stop: StopCheck<'_>,
        emit: &mut dyn FnMut(&str),
    ) -> Result<(FinishReason, Usage), GenerateError> {
        let tokens = self.prompt_tokens(prompt)?;
        self.generate_tokens(&tokens, params, should_stop, emit)
    }

    /// The assistant's next turn in `messages`, rendered with the model's chat template; ends
    /// at the model's end-of-turn token, which is never shown.
    pub fn chat(
        &mut self,
        messages: &[ChatMessage],
        params: &SamplingParams,
        should_stop: StopCheck<'_>,
        emit: &mut dyn FnMut(&str),
    ) -> Result<(FinishReason, Usage), GenerateError> {
        let text = self.render_chat(messages)?;
        let tokens = self.prompt_tokens(&text)?;
        tracing::debug!(
            messages = messages.len(),
            tokens = tokens.len(),
            "chat prompt rendered"
        );
        self.generate_tokens(&tokens, params, should_stop, emit)
    }

    /// The conversation as the model's template renders it, with the generation prompt.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, GenerateError> {
        let template = self
            .model
            .chat
            .as_ref()
            .map_err(|why| GenerateError::NoChatTemplate(why.clone()))?;
        template
            .render(messages, true)
            .map_err(GenerateError::Template)
    }

    /// The token ids of a prompt: special tokens written in the text are recognised, and the
    /// model's BOS is put first unless the text already starts with it (never twice).
    pub fn prompt_tokens(&self, text: &str) -> Result<Vec<u32>, GenerateError> {
        let mut ids = self.encode(text, false)?;
        if let Some(bos) = self.model.bos {
            if !ids.is_empty() && ids[0] != bos {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// The token ids of `text`.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, GenerateError> {
        Ok(self
            .model
            .tokenizer
            .encode(text, add_special)
            .map_err(|e| GenerateError::BadParams(format!("cannot tokenize prompt: {e}")))?
            .get_ids()
            .to_vec())
    }

    /// Generate after `prompt` (token ids), streaming text to `emit`: one request through the
    /// same scheduler the protocol uses.
    pub fn generate_tokens(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        should_stop: StopCheck<'_>,
        emit: &mut dyn FnMut(&str),
    ) -> Result<(FinishReason, Usage), GenerateError> {
        let tokenizer = self.model.tokenizer.clone();
        let mut scheduler = Scheduler::new(&tokenizer, self.chunk);
        let mut result = None;
        let mut on = |e: Event<'_>| match e {
            Event::Text(_, t) => emit(t),
            Event::Done(_, r) => result = Some(r),
        };
        let job = Job {
            id: RequestId::default(),
            prompt: prompt.to_vec(),
            params: params.clone(),
            stop: Box::new(should_stop),
        };
        scheduler.admit(self, job, &mut on);
        while !scheduler.idle() {
            scheduler.step(self, &mut on);
        }
        result.unwrap_or_else(|| Err(GenerateError::Model("the request never ended".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interruptions_are_said_in_words_with_the_fix() {
        let usage = Usage {
            generated_tokens: 7,
            ..Default::default()
        };
        let e = GenerateError::Interrupted(Interrupt::DeadlineExceeded, usage.clone());
        assert_eq!(e.code(), rbee_proto::ErrorCode::DeadlineExceeded);
        let m = e.to_string();
        assert!(
            m.starts_with("deadline passed after 7 generated tokens"),
            "{m}"
        );
        assert!(
            m.contains("--timeout") && !m.contains("DeadlineExceeded"),
            "{m}"
        );
        let e = GenerateError::Interrupted(Interrupt::Cancelled, usage);
        assert_eq!(e.to_string(), "cancelled after 7 generated tokens");
    }
}
