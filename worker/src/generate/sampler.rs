//! Choosing the next token: temperature / top-k / top-p sampling with a repeat penalty.
use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use rbee_proto::SamplingParams;

use super::GenerateError;

/// Checks `p` and turns it into candle's sampling mode (greedy at temperature 0).
pub fn sampling_for(p: &SamplingParams) -> Result<Sampling, GenerateError> {
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

/// One request's sampler: seeded, so the same request gives the same text.
pub struct Sampler {
    logits: LogitsProcessor,
    repeat_penalty: f32,
    repeat_last_n: usize,
}

impl Sampler {
    /// A sampler for `params`, refusing invalid ones.
    pub fn new(params: &SamplingParams) -> Result<Self, GenerateError> {
        Ok(Self {
            logits: LogitsProcessor::from_sampling(params.seed, sampling_for(params)?),
            repeat_penalty: params.repeat_penalty,
            repeat_last_n: params.repeat_last_n,
        })
    }

    /// The next token from `logits`, penalising tokens among the last of `history`.
    pub fn next(&mut self, logits: &Tensor, history: &[u32]) -> candle_core::Result<u32> {
        if (self.repeat_penalty - 1.0).abs() > f32::EPSILON {
            let start = history.len().saturating_sub(self.repeat_last_n);
            let adjusted = candle_transformers::utils::apply_repeat_penalty(
                logits,
                self.repeat_penalty,
                &history[start..],
            )?;
            self.logits.sample(&adjusted)
        } else {
            self.logits.sample(logits)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_parameters_are_refused() {
        let ok = SamplingParams::default();
        assert!(sampling_for(&ok).is_ok());
        for bad in [
            SamplingParams {
                temperature: -1.0,
                ..ok.clone()
            },
            SamplingParams {
                temperature: f64::NAN,
                ..ok.clone()
            },
            SamplingParams {
                top_p: Some(0.0),
                ..ok.clone()
            },
            SamplingParams {
                top_p: Some(1.5),
                ..ok.clone()
            },
            SamplingParams {
                top_k: Some(0),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(sampling_for(&bad), Err(GenerateError::BadParams(_))),
                "{bad:?}"
            );
        }
        let greedy = SamplingParams {
            temperature: 0.0,
            ..ok
        };
        assert!(matches!(sampling_for(&greedy), Ok(Sampling::ArgMax)));
    }
}
