//! The generation loop: prompt → streamed text, with sampling, stop sequences, cancellation and
//! timings.
//!
//! - [`sampler`]: the next token from the logits.
//! - [`detok`]: tokens to whole characters, stop sequences held back and cut.
//! - [`usage`]: timings to `Usage`.
use rbee_proto::{FinishReason, SamplingParams, Usage};

use crate::chat::ChatMessage;
use crate::load::LoadedModel;
use detok::TextOut;
use sampler::Sampler;
use usage::Clock;

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
    #[error("interrupted: {0:?}")]
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

/// A loaded model plus the loop that drives it.
pub struct Engine {
    /// The model, owned by the one thread that generates.
    pub model: LoadedModel,
}

impl Engine {
    /// An engine for `model`.
    pub fn new(model: LoadedModel) -> Self {
        Self { model }
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

    /// Generate after `prompt` (token ids), streaming text to `emit`.
    pub fn generate_tokens(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        should_stop: StopCheck<'_>,
        emit: &mut dyn FnMut(&str),
    ) -> Result<(FinishReason, Usage), GenerateError> {
        let mut clock = Clock::start(prompt.len());
        let mut sampler = Sampler::new(params)?;
        let context = self.model.summary.context_length as usize;
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if prompt.len() >= context {
            return Err(GenerateError::PromptTooLong {
                prompt: prompt.len(),
                context,
            });
        }
        if let Some(why) = should_stop() {
            return Err(GenerateError::Interrupted(why, clock.usage));
        }
        self.model.reset().map_err(model_err)?;
        let tokenizer = self.model.tokenizer.clone();
        let mut out = TextOut::new(&tokenizer, &params.stop);
        let mut history = prompt.to_vec();
        let mut logits = self.model.forward(prompt, 0).map_err(model_err)?;
        clock.prompt_done();
        let finish = loop {
            if clock.usage.generated_tokens >= params.max_tokens {
                break FinishReason::Length;
            }
            if let Some(why) = should_stop() {
                return Err(GenerateError::Interrupted(why, clock.interrupted()));
            }
            let next = sampler.next(&logits, &history).map_err(model_err)?;
            clock.token();
            history.push(next);
            if !params.ignore_eos && self.model.eos_tokens.contains(&next) {
                break FinishReason::Eos;
            }
            if out.push(next, emit) {
                break FinishReason::Stop;
            }
            if history.len() >= context {
                break FinishReason::ContextFull;
            }
            logits = self
                .model
                .forward(&[next], history.len() - 1)
                .map_err(model_err)?;
        };
        let finish = if finish != FinishReason::Stop && out.finish(emit) {
            FinishReason::Stop
        } else {
            finish
        };
        Ok((finish, clock.finish()))
    }
}
