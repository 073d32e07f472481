//! Continuous batching: several requests share each forward pass.
//!
//! The [`Scheduler`] keeps up to one sequence per slot of the [`Engine`]. Each [`Scheduler::step`]
//! runs every decoding sequence's next token together with prompt chunks of sequences still
//! reading their prompt (at most `chunk` prompt tokens per step, so a long prompt neither stalls
//! the others nor runs token by token), then samples for every sequence whose pass ended on its
//! last token. A request joins at the next step and leaves (its slot free) the moment it ends.
//! Sampling, stop sequences, limits, deadlines and cancellation stay per sequence. A prompt is cut
//! into the same chunks whatever else runs, and a row's arithmetic never depends on its
//! neighbours ([`crate::load::llama`]), so a seeded request gives the same text alone or batched.
//!
//! A free slot's cache keeps what its last sequence read; a new prompt starting with the same
//! tokens (a chat's next turn: the whole history again) reuses that prefix and reads only the rest.
use rbee_proto::{FinishReason, RequestId, SamplingParams, Usage};
use tokenizers::Tokenizer;

use super::detok::TextOut;
use super::sampler::Sampler;
use super::usage::Clock;
use super::{model_err, Engine, GenerateError, Interrupt, Work};

/// A request ready to run: its prompt as token ids.
pub struct Job<'a> {
    /// Chosen by the caller, carried by every event.
    pub id: RequestId,
    /// The prompt, BOS included.
    pub prompt: Vec<u32>,
    /// Sampling and limits for this request alone.
    pub params: SamplingParams,
    /// Asked before every token: `Some` ends the request (cancel, deadline).
    pub stop: Box<dyn Fn() -> Option<Interrupt> + 'a>,
}

/// What the scheduler reports.
pub enum Event<'e> {
    /// A piece of final text of request `id`.
    Text(RequestId, &'e str),
    /// Request `id` ended: finish reason and usage, or why not.
    Done(RequestId, Result<(FinishReason, Usage), GenerateError>),
}

/// One running request.
struct Seq<'a> {
    id: RequestId,
    slot: usize,
    sampler: Sampler,
    out: TextOut<'a>,
    clock: Clock,
    /// Prompt, then every sampled token.
    history: Vec<u32>,
    /// Tokens of `history` in the slot's cache.
    fed: usize,
    params: SamplingParams,
    stop: Box<dyn Fn() -> Option<Interrupt> + 'a>,
    /// Whether the prompt has been read (the first logits came).
    prompted: bool,
    /// Tokens that end generation.
    eos: Vec<u32>,
    /// Length of the prompt.
    prompt_len: usize,
}

impl Seq<'_> {
    /// What the slot's cache may offer the next request: the prompt tokens it read. Positions
    /// of sampled tokens were computed one row at a time, where a prompt read afresh computes
    /// them in chunks with different rounding; reusing them would change the answer.
    fn reusable(&self) -> &[u32] {
        &self.history[..self.fed.min(self.prompt_len)]
    }
}

/// The running requests of one engine; see the module documentation.
pub struct Scheduler<'a> {
    tokenizer: &'a Tokenizer,
    seqs: Vec<Seq<'a>>,
    /// Most prompt tokens read per step.
    chunk: usize,
    /// Counts steps, to find the least recently used slot.
    tick: u64,
}

impl<'a> Scheduler<'a> {
    /// A scheduler for an engine whose model uses `tokenizer`, reading at most `chunk` prompt
    /// tokens per step.
    pub fn new(tokenizer: &'a Tokenizer, chunk: usize) -> Self {
        Self {
            tokenizer,
            seqs: Vec::new(),
            chunk: chunk.max(1),
            tick: 0,
        }
    }

    /// Requests running now.
    pub fn active(&self) -> usize {
        self.seqs.len()
    }

    /// Whether nothing runs.
    pub fn idle(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Whether one more request can start now.
    pub fn has_room(&self, engine: &Engine) -> bool {
        self.seqs.len() < engine.parallel()
    }

    /// Whether request `id` is running.
    pub fn runs(&self, id: RequestId) -> bool {
        self.seqs.iter().any(|s| s.id == id)
    }

    /// Start `job` in a free slot (the caller checked [`Scheduler::has_room`]), reusing the
    /// longest cached prefix of its prompt; a job that cannot start is answered at once.
    pub fn admit(&mut self, engine: &mut Engine, job: Job<'a>, on: &mut dyn FnMut(Event<'_>)) {
        match self.start(engine, job) {
            Ok(seq) => self.seqs.push(seq),
            Err((id, e)) => on(Event::Done(id, Err(e))),
        }
    }

    fn start(
        &mut self,
        engine: &mut Engine,
        job: Job<'a>,
    ) -> Result<Seq<'a>, (RequestId, GenerateError)> {
        let id = job.id;
        let fail = |e| (id, e);
        let clock = Clock::start(job.prompt.len());
        let sampler = Sampler::new(&job.params).map_err(fail)?;
        let context = engine.context();
        if job.prompt.is_empty() {
            return Err(fail(GenerateError::EmptyPrompt));
        }
        if job.prompt.len() >= context {
            return Err(fail(GenerateError::PromptTooLong {
                prompt: job.prompt.len(),
                context,
            }));
        }
        if let Some(why) = (job.stop)() {
            return Err(fail(GenerateError::Interrupted(why, clock.usage)));
        }
        let busy: Vec<usize> = self.seqs.iter().map(|s| s.slot).collect();
        let (slot, fed) = engine
            .claim_slot(&job.prompt, &busy)
            .map_err(|e| fail(model_err(e)))?;
        let prompt_len = job.prompt.len();
        tracing::debug!(%id, slot, reused = fed, prompt = prompt_len, "request joins");
        Ok(Seq {
            id,
            slot,
            sampler,
            out: TextOut::new(self.tokenizer, &job.params.stop),
            clock,
            history: job.prompt,
            fed,
            params: job.params,
            stop: job.stop,
            prompted: false,
            eos: engine.model.eos_tokens.clone(),
            prompt_len,
        })
    }

    /// End every running request with `why` (shutdown).
    pub fn interrupt_all(
        &mut self,
        engine: &mut Engine,
        why: Interrupt,
        on: &mut dyn FnMut(Event<'_>),
    ) {
        for s in std::mem::take(&mut self.seqs) {
            engine.release(s.slot, s.reusable(), self.tick);
            on(Event::Done(
                s.id,
                Err(GenerateError::Interrupted(why, s.clock.interrupted())),
            ));
        }
    }

    /// Which sequences go into the next pass and how many of their tokens: every decoding one
    /// (one token), then prompt chunks in arrival order while the chunk budget lasts (the first
    /// always, so a prompt is cut the same way whatever runs beside it).
    fn plan(&self) -> Vec<(usize, usize)> {
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let mut budget = self.chunk;
        let mut reading = false;
        for (i, s) in self.seqs.iter().enumerate() {
            let pending = s.history.len() - s.fed;
            if s.prompted {
                // Decoding pieces first: they form one group of rows.
                let at = plan
                    .iter()
                    .take_while(|&&(j, _)| self.seqs[j].prompted)
                    .count();
                plan.insert(at, (i, pending));
                continue;
            }
            let take = pending.min(self.chunk);
            if !reading || take <= budget {
                plan.push((i, take));
                budget = budget.saturating_sub(take);
                reading = true;
            }
        }
        plan
    }

    /// One forward pass over the running requests, then sampling for each whose pass ended on
    /// its last token. Interrupted requests end first.
    pub fn step(&mut self, engine: &mut Engine, on: &mut dyn FnMut(Event<'_>)) {
        self.tick += 1;
        let tick = self.tick;
        self.seqs.retain(|s| match (s.stop)() {
            Some(why) => {
                engine.release(s.slot, s.reusable(), tick);
                on(Event::Done(
                    s.id,
                    Err(GenerateError::Interrupted(why, s.clock.interrupted())),
                ));
                false
            }
            None => true,
        });
        let plan = self.plan();
        if plan.is_empty() {
            return;
        }
        let work: Vec<Work<'_>> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.seqs[i];
                Work {
                    slot: s.slot,
                    tokens: &s.history[s.fed..s.fed + n],
                    pos: s.fed,
                    prompt: !s.prompted,
                }
            })
            .collect();
        let logits = match engine.forward_pieces(&work) {
            Ok(l) => l,
            Err(e) => {
                // A failed pass leaves every cache it touched in doubt: end those requests.
                let msg = e.to_string();
                let mut failed: Vec<usize> = plan.iter().map(|&(i, _)| i).collect();
                failed.sort_unstable();
                for i in failed.into_iter().rev() {
                    let s = self.seqs.remove(i);
                    engine.release(s.slot, &[], tick);
                    on(Event::Done(s.id, Err(GenerateError::Model(msg.clone()))));
                }
                return;
            }
        };
        let mut ended = Vec::new();
        for (row, &(i, n)) in plan.iter().enumerate() {
            let s = &mut self.seqs[i];
            s.fed += n;
            if s.fed < s.history.len() {
                continue;
            }
            let result = logits
                .get(row)
                .map_err(model_err)
                .and_then(|l| advance(s, &l, engine.context(), on));
            match result {
                Ok(None) => {}
                Ok(Some(finish)) => ended.push((i, Ok(finish))),
                Err(e) => ended.push((i, Err(e))),
            }
        }
        // Remove from the back, so the indices still to remove stay valid.
        ended.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, result) in ended {
            let mut s = self.seqs.remove(i);
            engine.release(s.slot, s.reusable(), tick);
            let id = s.id;
            let result = result.map(|finish| {
                let stopped =
                    finish != FinishReason::Stop && s.out.finish(&mut |t| on(Event::Text(id, t)));
                let finish = if stopped { FinishReason::Stop } else { finish };
                (finish, s.clock.finish())
            });
            on(Event::Done(id, result));
        }
    }
}

/// After a pass ended on `s`'s last token: check its limits, sample, stream the text. `Some`
/// when the request is finished.
fn advance(
    s: &mut Seq<'_>,
    logits: &candle_core::Tensor,
    context: usize,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<Option<FinishReason>, GenerateError> {
    if !s.prompted {
        s.prompted = true;
        s.clock.prompt_done();
    }
    if s.clock.usage.generated_tokens >= s.params.max_tokens {
        return Ok(Some(FinishReason::Length));
    }
    if let Some(why) = (s.stop)() {
        return Err(GenerateError::Interrupted(why, s.clock.interrupted()));
    }
    let next = s.sampler.next(logits, &s.history).map_err(model_err)?;
    s.clock.token();
    s.history.push(next);
    if !s.params.ignore_eos && s.eos.contains(&next) {
        return Ok(Some(FinishReason::Eos));
    }
    let id = s.id;
    if s.out.push(next, &mut |t| on(Event::Text(id, t))) {
        return Ok(Some(FinishReason::Stop));
    }
    if s.history.len() >= context {
        return Ok(Some(FinishReason::ContextFull));
    }
    Ok(None)
}
