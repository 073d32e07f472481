//! Timings of one generation, turned into the `Usage` every answer reports.
use std::time::Instant;

use rbee_proto::Usage;

/// Marks the moments that matter: start, prompt processed, first token, end.
pub struct Clock {
    started: Instant,
    first_token: Option<Instant>,
    /// What has been measured so far.
    pub usage: Usage,
}

impl Clock {
    /// Start timing a request whose prompt has `prompt_tokens` tokens.
    pub fn start(prompt_tokens: usize) -> Self {
        Self {
            started: Instant::now(),
            first_token: None,
            usage: Usage {
                prompt_tokens: prompt_tokens as u32,
                ..Default::default()
            },
        }
    }

    /// The prompt's forward pass is done.
    pub fn prompt_done(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        self.usage.prompt_tokens_per_s = f64::from(self.usage.prompt_tokens) / secs.max(1e-9);
    }

    /// A token was sampled; the first one fixes the time to first token.
    pub fn token(&mut self) {
        self.usage.generated_tokens += 1;
        if self.first_token.is_none() {
            self.first_token = Some(Instant::now());
        }
    }

    /// Usage so far, for an answer cut short (cancel, deadline).
    pub fn interrupted(&self) -> Usage {
        let mut u = self.usage.clone();
        u.total_ms = self.started.elapsed().as_secs_f64() * 1e3;
        u
    }

    /// Final usage: time to first token, decode speed (tokens after the first), total time.
    pub fn finish(mut self) -> Usage {
        let end = Instant::now();
        let generated = self.usage.generated_tokens;
        let u = &mut self.usage;
        u.time_to_first_token_ms = self
            .first_token
            .map_or(0.0, |t| (t - self.started).as_secs_f64() * 1e3);
        let decode_secs = self.first_token.map_or(0.0, |t| (end - t).as_secs_f64());
        u.decode_tokens_per_s = if generated > 1 && decode_secs > 0.0 {
            f64::from(generated - 1) / decode_secs
        } else {
            0.0
        };
        u.total_ms = (end - self.started).as_secs_f64() * 1e3;
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_tokens_and_orders_times() {
        let mut c = Clock::start(5);
        c.prompt_done();
        assert!(c.usage.prompt_tokens_per_s > 0.0);
        for _ in 0..3 {
            c.token();
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        let u = c.finish();
        assert_eq!((u.prompt_tokens, u.generated_tokens), (5, 3));
        assert!(u.total_ms >= u.time_to_first_token_ms);
        assert!(u.decode_tokens_per_s > 0.0);
    }
}
