//! What the node sessions report: the cluster view's changes, spawn answers, tokens and ends of
//! generations, retries after a failure before the first token, a node's session dropping.
use super::*;

impl Hub {
    pub(super) fn on_action(&mut self, action: Action) {
        let changed = self.cluster.apply(&action);
        match action {
            Action::Disconnected { node, reason, .. } => {
                self.settle(node);
                self.node_lost(node, &reason);
                self.scrapes_lost(node, &reason);
                self.unloading.retain(|(n, _)| *n != node);
                self.stopped_if_done();
            }
            Action::Reply {
                node,
                request: Request::Spawn(spec),
                result,
            } => self.spawn_answered(node, &spec, result.map(|_| ())),
            Action::Reply {
                node,
                request: Request::ListModels,
                ..
            } => self.settle(node),
            Action::Reply {
                node,
                request: Request::Kill { worker },
                ..
            } => {
                self.unloading.remove(&(node, worker));
                self.stopped_if_done();
            }
            Action::Reply {
                node,
                request: Request::Metrics,
                result,
            } => self.scraped(
                node,
                result.and_then(|r| match r {
                    rbee_proto::session::Reply::Metrics { text } => Ok(text),
                    other => Err(format!("unexpected answer {other:?}")),
                }),
            ),
            Action::PromptToken { prompt, text, .. } => self.token(prompt, text),
            Action::PromptDone { prompt, result, .. } => self.done(prompt, result),
            Action::AgentEvent {
                node,
                event: Event::WorkerState { worker },
            } if matches!(worker.state, WorkerState::Exited | WorkerState::Failed) => {
                self.owned.remove(&(node, worker.id));
            }
            _ => {}
        }
        if changed {
            self.pump();
        }
    }

    pub(super) fn settle(&mut self, node: NodeIdx) {
        if self.settled_nodes.insert(node) && self.settled_nodes.len() >= self.cluster.nodes.len() {
            let _ = self.settled.send(true);
        }
    }

    pub(super) fn spawn_answered(
        &mut self,
        node: NodeIdx,
        spec: &SpawnSpec,
        result: Result<(), String>,
    ) {
        let Some(i) = self
            .spawns
            .iter()
            .position(|p| p.node == node && &p.spec == spec)
        else {
            return;
        };
        let p = self.spawns.remove(i);
        match result {
            Ok(()) => {
                // The reply put the worker into the cluster view; find it to own it.
                let n = &self.cluster.nodes[node];
                if let Some(w) = n
                    .workers
                    .values()
                    .filter(|w| {
                        w.model == spec.model && !self.owned.contains_key(&(node, w.id.clone()))
                    })
                    .max_by_key(|w| w.id.clone())
                {
                    self.owned.insert(
                        (node, w.id.clone()),
                        Owned {
                            keep: p.keep,
                            idle_since: Instant::now(),
                        },
                    );
                }
            }
            Err(reason) => {
                tracing::warn!(node = %self.cluster.nodes[node].name, model = %p.model, %reason, "spawn refused");
                self.refuse_node(&p.model, node, reason);
            }
        }
        self.pump();
    }

    pub(super) fn token(&mut self, prompt: PromptId, text: String) {
        let Some(&id) = self.prompts.get(&prompt) else {
            return;
        };
        let Some(live) = self.jobs.get_mut(&id) else {
            return;
        };
        if live.ending.is_some() {
            return;
        }
        let now = Instant::now();
        let first = *live.first_token.get_or_insert(now);
        let ttft = first.duration_since(live.arrived).as_millis() as u64;
        let secs = now.duration_since(first).as_secs_f64();
        self.board.update(id, |r| {
            r.tokens += 1;
            r.ttft_ms = Some(ttft);
            if secs > 0.0 {
                r.tok_s = (r.tokens - 1) as f64 / secs;
            }
        });
        if live.events.send(GenEvent::Token(text)).is_err() {
            self.cancel(id, "cancelled");
        }
    }

    /// A generation ended (or its node was lost); the slot it frees goes to the oldest waiting
    /// request.
    pub(super) fn done(&mut self, prompt: PromptId, result: Result<InferDone, String>) {
        self.end_of(prompt, result);
        self.pump();
    }

    fn end_of(&mut self, prompt: PromptId, result: Result<InferDone, String>) {
        let Some(id) = self.prompts.remove(&prompt) else {
            return;
        };
        let place = self
            .jobs
            .get_mut(&id)
            .and_then(|l| l.running.take())
            .map(|(p, _)| p);
        if let Some(place) = &place {
            self.release(place);
        }
        let Some(live) = self.jobs.get(&id) else {
            return;
        };
        if let Some(why) = live.ending {
            return self.finish(id, why.to_string());
        }
        match result {
            Ok(d) => {
                let n = u64::from(d.usage.generated_tokens);
                self.stats.tokens += n;
                if let Some(live) = self.jobs.get_mut(&id) {
                    live.tokens = n;
                    live.decode_tok_s = d.usage.decode_tokens_per_s;
                }
                let live = &self.jobs[&id];
                let _ = live.events.send(GenEvent::Done {
                    finish: d.finish_reason,
                    usage: d.usage,
                });
                self.finish(id, "ok".into());
            }
            Err(msg) => self.failed_on_worker(id, place, &msg),
        }
    }

    /// A generation failed: before its first token it moves once to another worker (a busy or
    /// vanished worker, a lost node); otherwise the client gets the error.
    pub(super) fn failed_on_worker(&mut self, id: JobId, place: Option<Place>, msg: &str) {
        let parsed = parse_agent_error(msg);
        let retryable = match parsed {
            Some((code, _)) => matches!(
                code,
                ErrorCode::WorkerGone
                    | ErrorCode::Busy
                    | ErrorCode::NotFound
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Internal
            ),
            None => true,
        };
        let Some(live) = self.jobs.get_mut(&id) else {
            return;
        };
        if retryable && live.first_token.is_none() && live.retries < 1 {
            live.retries += 1;
            live.tried.extend(place);
            self.stats.retries += 1;
            tracing::info!(job = id, error = msg, "retrying on another worker");
            let (model, tried) = (live.job.model.clone(), live.tried.clone());
            if !self.place(id) {
                self.waiting.push_front(id);
                self.ensure_supply(&model, &tried);
            }
            return;
        }
        let err = match parsed {
            Some((code, text)) => ApiError::from_agent(code, text),
            None => ApiError::unavailable("node_unreachable", msg.to_string(), 2),
        };
        self.fail(id, err);
    }

    pub(super) fn release(&mut self, place: &Place) {
        let left = match self.load.get_mut(place) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            self.load.remove(place);
        }
        if let Some(o) = self.owned.get_mut(place) {
            o.idle_since = Instant::now();
        }
    }

    /// A node's session dropped: its session tasks are gone, so what ran there ends now.
    pub(super) fn node_lost(&mut self, node: NodeIdx, reason: &str) {
        self.spawns.retain(|p| p.node != node);
        let lost: Vec<(PromptId, JobId)> = self
            .jobs
            .iter()
            .filter_map(|(id, l)| match &l.running {
                Some(((n, _), prompt)) if *n == node => Some((*prompt, *id)),
                _ => None,
            })
            .collect();
        let msg = format!(
            "node `{}` unreachable: {reason}",
            self.cluster.nodes[node].name
        );
        for (prompt, _) in lost {
            self.done(prompt, Err(msg.clone()));
        }
        self.load.retain(|(n, _), _| *n != node);
    }
}
