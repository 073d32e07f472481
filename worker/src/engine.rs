//! The generation loop: prompt → streamed text, with sampling, stop sequences, cancellation and
//! timings.
use std::time::Instant;

use candle_transformers::generation::{LogitsProcessor, Sampling};
use rbee_proto::{FinishReason, SamplingParams, Usage};

use crate::detok::{Detokenizer, StopMatcher};
use crate::model::LoadedModel;

/// Why generation was interrupted from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    Cancelled,
    DeadlineExceeded,
}

/// Checked before every token; `Some` stops the loop.
pub type StopCheck<'a> = &'a dyn Fn() -> Option<Interrupt>;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("prompt has {prompt} tokens but the context holds {context} (and at least one must be generated)")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("prompt is empty")]
    EmptyPrompt,
    #[error("interrupted: {0:?}")]
    Interrupted(Interrupt, Usage),
    #[error("invalid parameters: {0}")]
    BadParams(String),
    #[error("model error: {0}")]
    Model(String),
}

impl GenerateError {
    pub fn code(&self) -> rbee_proto::ErrorCode {
        use rbee_proto::ErrorCode;
        match self {
            GenerateError::PromptTooLong { .. } => ErrorCode::PromptTooLong,
            GenerateError::EmptyPrompt | GenerateError::BadParams(_) => ErrorCode::BadRequest,
            GenerateError::Interrupted(Interrupt::Cancelled, _) => ErrorCode::Cancelled,
            GenerateError::Interrupted(Interrupt::DeadlineExceeded, _) => {
                ErrorCode::DeadlineExceeded
            }
            GenerateError::Model(_) => ErrorCode::Internal,
        }
    }
}

/// A loaded model plus the loop that drives it.
pub struct Engine {
    pub model: LoadedModel,
}

fn sampling_for(p: &SamplingParams) -> Result<Sampling, GenerateError> {
    if !(p.temperature.is_finite() && p.temperature >= 0.0) {
        return Err(GenerateError::BadParams(format!(
            "temperature {} must be ≥ 0",
            p.temperature
        )));
    }
    if let Some(tp) = p.top_p {
        if !(tp > 0.0 && tp <= 1.0) {
            return Err(GenerateError::BadParams(format!(
                "top_p {tp} must be in (0, 1]"
            )));
        }
    }
    if p.top_k == Some(0) {
        return Err(GenerateError::BadParams("top_k must be ≥ 1".into()));
    }
    let temperature = p.temperature;
    Ok(if temperature <= 1e-7 {
        Sampling::ArgMax
    } else {
        match (p.top_k, p.top_p) {
            (None, None) => Sampling::All { temperature },
            (Some(k), None) => Sampling::TopK { k, temperature },
            (None, Some(p)) => Sampling::TopP { p, temperature },
            (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        }
    })
}

impl Engine {
    pub fn new(model: LoadedModel) -> Self {
        Self { model }
    }

    /// Generate from `prompt`, handing each piece of text to `emit` as soon as it is final.
    pub fn generate(
        &mut self,
        prompt: &str,
        params: &SamplingParams,
        should_stop: StopCheck<'_>,
        emit: &mut dyn FnMut(&str),
    ) -> Result<(FinishReason, Usage), GenerateError> {
        let started = Instant::now();
        let sampling = sampling_for(params)?;
        let model_err = |e: candle_core::Error| GenerateError::Model(e.to_string());
        let prompt_tokens: Vec<u32> = self
            .model
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| GenerateError::BadParams(format!("cannot tokenize prompt: {e}")))?
            .get_ids()
            .to_vec();
        let context = self.model.summary.context_length as usize;
        if prompt_tokens.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if prompt_tokens.len() >= context {
            return Err(GenerateError::PromptTooLong {
                prompt: prompt_tokens.len(),
                context,
            });
        }
        let mut usage = Usage {
            prompt_tokens: prompt_tokens.len() as u32,
            ..Default::default()
        };
        if let Some(why) = should_stop() {
            return Err(GenerateError::Interrupted(why, usage));
        }
        self.model.reset().map_err(model_err)?;
        let mut sampler = LogitsProcessor::from_sampling(params.seed, sampling);
        let mut stops = StopMatcher::new(&params.stop);
        let tokenizer = self.model.tokenizer.clone();
        let mut detok = Detokenizer::new(&tokenizer);
        let mut all_tokens = prompt_tokens.clone();

        let logits = self.model.forward(&prompt_tokens, 0).map_err(model_err)?;
        let prompt_done = Instant::now();
        let prompt_secs = (prompt_done - started).as_secs_f64();
        usage.prompt_tokens_per_s = prompt_tokens.len() as f64 / prompt_secs.max(1e-9);
        let mut logits = logits;
        let mut first_token_at = None;
        let mut finish;
        let mut generated = 0u32;

        let finish_text =
            |text: &str, stops: &mut StopMatcher, emit: &mut dyn FnMut(&str)| -> bool {
                let fed = stops.feed(text);
                if !fed.emit.is_empty() {
                    emit(&fed.emit);
                }
                fed.stopped
            };

        loop {
            if generated >= params.max_tokens {
                finish = FinishReason::Length;
                break;
            }
            if let Some(why) = should_stop() {
                usage.generated_tokens = generated;
                usage.total_ms = started.elapsed().as_secs_f64() * 1e3;
                return Err(GenerateError::Interrupted(why, usage));
            }
            let logits_adj = if (params.repeat_penalty - 1.0).abs() > f32::EPSILON {
                let start = all_tokens.len().saturating_sub(params.repeat_last_n);
                candle_transformers::utils::apply_repeat_penalty(
                    &logits,
                    params.repeat_penalty,
                    &all_tokens[start..],
                )
                .map_err(model_err)?
            } else {
                logits.clone()
            };
            let next = sampler.sample(&logits_adj).map_err(model_err)?;
            generated += 1;
            if first_token_at.is_none() {
                first_token_at = Some(Instant::now());
            }
            all_tokens.push(next);
            if !params.ignore_eos && self.model.eos_tokens.contains(&next) {
                finish = FinishReason::Eos;
                break;
            }
            if let Some(text) = detok.push(next) {
                if finish_text(&text, &mut stops, emit) {
                    finish = FinishReason::Stop;
                    break;
                }
            }
            if all_tokens.len() >= context {
                finish = FinishReason::ContextFull;
                break;
            }
            logits = self
                .model
                .forward(&[next], all_tokens.len() - 1)
                .map_err(model_err)?;
        }
        if finish != FinishReason::Stop {
            if let Some(rest) = detok.flush() {
                if finish_text(&rest, &mut stops, emit) {
                    finish = FinishReason::Stop;
                }
            }
            if finish != FinishReason::Stop {
                let held = stops.finish();
                if !held.is_empty() {
                    emit(&held);
                }
            }
        }
        let end = Instant::now();
        usage.generated_tokens = generated;
        usage.time_to_first_token_ms = first_token_at
            .map(|t| (t - started).as_secs_f64() * 1e3)
            .unwrap_or(0.0);
        let decode_secs = first_token_at
            .map(|t| (end - t).as_secs_f64())
            .unwrap_or(0.0);
        usage.decode_tokens_per_s = if generated > 1 && decode_secs > 0.0 {
            (generated - 1) as f64 / decode_secs
        } else {
            0.0
        };
        usage.total_ms = (end - started).as_secs_f64() * 1e3;
        Ok((finish, usage))
    }
}
