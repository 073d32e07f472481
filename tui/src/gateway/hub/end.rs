//! Endings: the client going away, failures, timeouts, the audit line, and unloading idle
//! workers the gateway loaded.
use super::*;

impl Hub {
    /// The client went away (or the timeout passed): stop the generation on its worker; the
    /// job ends when the worker confirms.
    pub(super) fn cancel(&mut self, id: JobId, why: &'static str) {
        let Some(live) = self.jobs.get_mut(&id) else {
            return;
        };
        if live.ending.is_some() {
            return;
        }
        live.ending = Some(why);
        match &live.running {
            Some(((node, _), prompt)) => {
                let effect = Effect::CancelInfer {
                    node: *node,
                    prompt: *prompt,
                };
                let _ = self.effects[*node].try_send(effect);
            }
            None => {
                self.waiting.retain(|w| *w != id);
                self.finish(id, why.into());
            }
        }
    }

    pub(super) fn fail(&mut self, id: JobId, err: ApiError) {
        self.waiting.retain(|w| *w != id);
        let outcome = err.code.to_string();
        if let Some(live) = self.jobs.get(&id) {
            let _ = live.events.send(GenEvent::Failed(err));
        }
        self.finish(id, outcome);
    }

    /// Forget job `id`: count it, audit it, and unload a keep-alive-0 worker it leaves idle.
    pub(super) fn finish(&mut self, id: JobId, outcome: String) {
        let Some(live) = self.jobs.remove(&id) else {
            return;
        };
        if let Some((place, prompt)) = &live.running {
            // Still running (a timeout): its end will not be awaited.
            self.prompts.remove(prompt);
            self.release(place);
        }
        match outcome.as_str() {
            "ok" => self.stats.ok += 1,
            "cancelled" => self.stats.cancelled += 1,
            "queue_full" => {}
            _ => self.stats.failed += 1,
        }
        let now = Instant::now();
        let total_ms = now.duration_since(live.arrived).as_millis() as u64;
        let ok = outcome == "ok";
        self.board.update(id, |r| {
            r.phase = Phase::Done(outcome.clone());
            r.total_ms = Some(total_ms);
            if ok {
                r.tokens = live.tokens;
                r.tok_s = live.decode_tok_s;
            }
        });
        let (node, worker) = live.last_place.clone().unwrap_or_default();
        self.audit.write(&AuditLine {
            at: now_millis(),
            key: live.job.key_id.clone(),
            client: live.job.client.clone(),
            endpoint: match live.job.endpoint {
                Endpoint::Chat => "chat",
                Endpoint::Completion => "completion",
            },
            model: live.job.model.clone(),
            node,
            worker,
            outcome,
            queue_ms: live
                .started
                .unwrap_or(now)
                .duration_since(live.arrived)
                .as_millis() as u64,
            ttft_ms: live
                .first_token
                .map(|t| t.duration_since(live.arrived).as_millis() as u64),
            tokens: live.tokens,
            total_ms,
        });
        self.unload_idle();
    }

    pub(super) fn on_tick(&mut self) {
        let now = Instant::now();
        let late: Vec<(JobId, bool)> = self
            .jobs
            .iter()
            .filter(|(_, l)| {
                l.ending.is_none()
                    && match l.running {
                        Some(_) => now >= l.deadline,
                        None => now >= l.wait_deadline,
                    }
            })
            .map(|(id, l)| (*id, l.running.is_some()))
            .collect();
        for (id, running) in late {
            let l = &self.jobs[&id];
            let secs = l.wait_deadline.duration_since(l.arrived).as_secs();
            let model = self.jobs[&id].job.model.clone();
            if running {
                let secs = self.jobs[&id].job.timeout.as_secs();
                let err = ApiError::server(
                    axum::http::StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!("the request ran past its {secs} s timeout"),
                );
                let _ = self.jobs[&id].events.send(GenEvent::Failed(err));
                self.cancel(id, "timeout");
            } else {
                let msg = format!(
                    "no worker of `{model}` could take the request within {secs} s (waiting: {})",
                    self.waiting.len()
                );
                self.fail(id, ApiError::unavailable("queue_timeout", msg, 5));
            }
        }
        for r in self.refused.values_mut() {
            r.retain(|_, (_, at)| at.elapsed() < REFUSAL_MEMORY);
        }
        self.unload_idle();
    }

    /// Unload the gateway's workers whose keep-alive ran out (0: as soon as they are idle).
    pub(super) fn unload_idle(&mut self) {
        let now = Instant::now();
        let idle: Vec<Place> = self
            .owned
            .iter()
            .filter(|(place, o)| {
                !self.load.contains_key(*place)
                    && match o.keep {
                        KeepAlive::Forever => false,
                        KeepAlive::For(d) => now.duration_since(o.idle_since) >= d,
                    }
                    && self.cluster.nodes[place.0]
                        .workers
                        .get(&place.1)
                        .is_some_and(|w| w.state.is_serving())
            })
            .map(|(p, _)| p.clone())
            .collect();
        for place in idle {
            let (node, worker) = place.clone();
            let effect = Effect::Request {
                node,
                request: Request::Kill {
                    worker: worker.clone(),
                },
            };
            if self.effects[node].try_send(effect).is_ok() {
                tracing::info!(node = %self.cluster.nodes[node].name, %worker, "unloading an idle worker");
                self.owned.remove(&place);
                self.stats.unloads += 1;
            }
        }
    }
}
