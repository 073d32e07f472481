//! Jobs coming in: placement on a free worker, the wait queue, and loading a worker on demand
//! (which node, and why none can).
use super::*;

impl Hub {
    pub(super) fn generate(&mut self, job: Job, events: mpsc::UnboundedSender<GenEvent>) {
        self.stats.requests += 1;
        let now = Instant::now();
        let id = job.id;
        let model = job.model.clone();
        let live = Live {
            deadline: now + job.timeout,
            wait_deadline: now + job.timeout.min(self.cfg.queue_timeout),
            job,
            events,
            arrived: now,
            running: None,
            tried: Vec::new(),
            retries: 0,
            started: None,
            first_token: None,
            tokens: 0,
            ending: None,
            last_place: None,
            decode_tok_s: 0.0,
        };
        self.board.add(RequestRow {
            id,
            arrived: now_millis(),
            client: live.job.client.clone(),
            key: live.job.key_id.clone(),
            model: model.clone(),
            node: String::new(),
            worker: String::new(),
            phase: Phase::Waiting,
            queue_ms: None,
            ttft_ms: None,
            tokens: 0,
            tok_s: 0.0,
            total_ms: None,
        });
        self.jobs.insert(id, live);
        if !self.cluster.knows(&model) {
            let err = if self.cluster.nodes.iter().any(|n| n.up) {
                ApiError::model_not_found(&model, &self.cluster.model_names())
            } else {
                ApiError::unavailable(
                    "no_node",
                    format!("no node is reachable ({})", self.down_reasons()),
                    5,
                )
            };
            return self.fail(id, err);
        }
        // First come, first served: a request may skip the queue only when nobody waits for
        // its model.
        let queued = self
            .waiting
            .iter()
            .any(|w| self.jobs.get(w).is_some_and(|j| j.job.model == model));
        if !queued && self.place(id) {
            return;
        }
        if self.waiting.len() >= self.cfg.queue {
            self.stats.queue_full += 1;
            return self.fail(id, ApiError::queue_full(self.cfg.queue, 1));
        }
        self.waiting.push_back(id);
        if queued {
            self.pump();
        } else {
            self.ensure_supply(&model, &[]);
        }
    }

    /// Send job `id` to the best free worker; false when there is none.
    pub(super) fn place(&mut self, id: JobId) -> bool {
        loop {
            let Some(live) = self.jobs.get(&id) else {
                return true;
            };
            let slots = self.cfg.worker_slots;
            let Some(place) = pick_worker(
                &self.cluster,
                &self.load,
                slots,
                &live.job.model,
                &live.tried,
            ) else {
                return false;
            };
            if self.start_on(id, place.clone()) {
                return true;
            }
            if let Some(live) = self.jobs.get_mut(&id) {
                live.tried.push(place);
            }
        }
    }

    pub(super) fn start_on(&mut self, id: JobId, place: Place) -> bool {
        let prompt = self.next_prompt;
        let Some(live) = self.jobs.get_mut(&id) else {
            return true;
        };
        let (node, worker) = place.clone();
        let request = match &live.job.input {
            Input::Chat(messages) => Request::Chat {
                worker: Some(worker.clone()),
                model: None,
                messages: messages.clone(),
                params: live.job.params.clone(),
            },
            Input::Text(prompt) => Request::Infer {
                worker: Some(worker.clone()),
                model: None,
                prompt: prompt.clone(),
                params: live.job.params.clone(),
            },
        };
        let effect = Effect::Infer {
            node,
            prompt,
            request,
        };
        if self.effects[node].try_send(effect).is_err() {
            return false;
        }
        self.next_prompt += 1;
        let now = Instant::now();
        if live.started.is_none() {
            live.started = Some(now);
            self.stats.started += 1;
            self.stats.queue_ms_sum += now.duration_since(live.arrived).as_millis() as u64;
        }
        live.running = Some((place.clone(), prompt));
        let node_name = self.cluster.nodes[node].name.clone();
        live.last_place = Some((node_name.clone(), worker.clone()));
        let queue_ms = live
            .started
            .map(|t| t.duration_since(live.arrived).as_millis() as u64);
        self.board.update(id, |r| {
            r.node = node_name.clone();
            r.worker = worker.clone();
            r.phase = Phase::Running;
            r.queue_ms = queue_ms;
        });
        let _ = live.events.send(GenEvent::Started {
            node: node_name,
            worker,
        });
        self.prompts.insert(prompt, id);
        *self.load.entry(place.clone()).or_default() += 1;
        if let Some(o) = self.owned.get_mut(&place) {
            o.idle_since = now;
        }
        true
    }

    /// Place what waits, in arrival order; then make sure every model still waited for has a
    /// worker on its way, or refuse its requests with the reason.
    pub(super) fn pump(&mut self) {
        let mut still = VecDeque::with_capacity(self.waiting.len());
        while let Some(id) = self.waiting.pop_front() {
            if !self.jobs.contains_key(&id) {
                continue;
            }
            if !self.place(id) {
                still.push_back(id);
            }
        }
        self.waiting = still;
        let mut wanted: Vec<(String, Vec<Place>)> = self
            .waiting
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .map(|j| (j.job.model.clone(), j.tried.clone()))
            .collect();
        wanted.sort();
        wanted.dedup();
        for (model, tried) in wanted {
            self.ensure_supply(&model, &tried);
        }
    }

    /// A worker of `model` is needed (for a request that failed on `exclude`) when none is
    /// serving or coming, or when every serving one is full: spawn one on the best node that has none, or refuse the waiting requests when no
    /// node can hold it and nothing else will come.
    pub(super) fn ensure_supply(&mut self, model: &str, exclude: &[Place]) {
        let s = supply(
            &self.cluster,
            &self.load,
            self.cfg.worker_slots,
            model,
            exclude,
        );
        let spawning = self.spawns.iter().any(|p| p.model == model);
        if s.free > 0 || spawning || (s.serving == 0 && s.coming > 0) {
            return;
        }
        let refused: HashSet<NodeIdx> = self
            .refused
            .get(model)
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default();
        if let Some(node) = spawn_node(&self.cluster, model, &refused, &self.cfg.device) {
            let keep = self
                .waiting
                .iter()
                .filter_map(|id| self.jobs.get(id))
                .find(|j| j.job.model == model)
                .and_then(|j| j.job.keep_alive)
                .unwrap_or(self.cfg.keep_alive);
            self.spawn(node, model, keep);
            return;
        }
        if s.serving == 0 && s.coming == 0 {
            let reason = self.why_no_node(model);
            let msg = format!("no node can hold model `{model}`: {reason}");
            let ids: Vec<JobId> = self
                .waiting
                .iter()
                .copied()
                .filter(|id| {
                    self.jobs.get(id).is_some_and(|j| {
                        j.job.model == model && exclude.iter().all(|p| j.tried.contains(p))
                    })
                })
                .collect();
            self.waiting.retain(|id| !ids.contains(id));
            for id in ids {
                self.fail(id, ApiError::unavailable("no_capacity", msg.clone(), 30));
            }
        }
    }

    pub(super) fn spawn(&mut self, node: NodeIdx, model: &str, keep: KeepAlive) {
        let Some(entry) = self.cluster.nodes[node].entry(model) else {
            return;
        };
        let spec = SpawnSpec {
            model: entry.reference.clone(),
            // `auto` travels as is: the agent picks the GPU whose free memory, after what it has
            // promised other spawns, fits the model (or its CPU).
            device: self.cfg.device.clone(),
            threads: self.cfg.threads,
            parallel: self.cfg.parallel,
            ..Default::default()
        };
        let effect = Effect::Request {
            node,
            request: Request::Spawn(spec.clone()),
        };
        if self.effects[node].try_send(effect).is_err() {
            self.refuse_node(model, node, "its session queue is full".into());
            return;
        }
        tracing::info!(node = %self.cluster.nodes[node].name, model, "spawning a worker on demand");
        self.stats.spawns += 1;
        self.spawns.push(PendingSpawn {
            node,
            model: model.into(),
            spec,
            keep,
        });
    }

    pub(super) fn refuse_node(&mut self, model: &str, node: NodeIdx, reason: String) {
        self.refused
            .entry(model.into())
            .or_default()
            .insert(node, (reason, Instant::now()));
    }

    /// Why no node can take a new worker of `model`, node by node.
    pub(super) fn why_no_node(&self, model: &str) -> String {
        let refused = self.refused.get(model);
        let parts: Vec<String> = self
            .cluster
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let why = if let Some((r, _)) = refused.and_then(|r| r.get(&i)) {
                    r.clone()
                } else if !n.up {
                    format!("unreachable ({})", n.reason)
                } else if n.entry(model).is_none() {
                    "does not have it".into()
                } else if let Some(w) = n.workers.values().find(|w| n.serves(w, model)) {
                    format!(
                        "worker {} is {} {}",
                        w.id,
                        w.state,
                        w.last_exit.clone().unwrap_or_default()
                    )
                    .trim_end()
                    .to_string()
                } else {
                    "cannot take it now".into()
                };
                format!("{}: {why}", n.name)
            })
            .collect();
        parts.join("; ")
    }

    pub(super) fn down_reasons(&self) -> String {
        self.cluster
            .nodes
            .iter()
            .map(|n| format!("{}: {}", n.name, n.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }
}
