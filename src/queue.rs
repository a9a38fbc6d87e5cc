//! The scheduler: one dispatcher per channel claims queued tasks under a lease (one short
//! transaction, never held across provider work), runs them on the channel's provider
//! with at most `max_concurrency` at once, renews the lease while they run, and enforces
//! deadlines. A task whose lease lapses (its process died) is claimed again.
//!
//! A supervisor follows the live channel set: it starts a dispatcher (and the provider's
//! background work) for each enabled channel that appears, and a channel that leaves the
//! set stops its own dispatcher through its token. Jobs a retired channel was running go
//! on to their end on its provider; only then does the provider's background work stop.
//!
//! At a graceful stop, dispatchers stop claiming and running jobs get the grace period to
//! end; those still running then are stopped where they are (not canceled upstream) and
//! their tasks handed back to the queue, so another process takes them over at once
//! instead of waiting for their leases to lapse.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{
    channels::Channel,
    config::Secret,
    db::{ClaimTerms, Claimed, DbResult, Finish},
    gateway::{Gateway, NewOutput, OutputBody, Recorded},
    providers::{ChannelRuntime, InputImage, Job, JobContext, JobSink, Outcome, Output, Upstream},
    tasks::{Task, TaskId},
};

/// How long the deadline sweeper's lease lasts: a successor takes over within this much
/// of the holder's death.
const SWEEP_LEASE: Duration = Duration::from_secs(15);
/// The deadline sweeper's lease. Every kiln process tries to take or renew it at least
/// once a second, so while any kiln runs on a database, its `until` keeps moving:
/// `kiln db copy` watches it to tell whether its source is in use.
pub(crate) const DEADLINE_SWEEP: &str = "deadline-sweep";
/// A run interrupted this many times (its process died each time) is failed rather
/// than tried again: it may be what kills the process.
const MAX_ATTEMPTS: u32 = 3;

/// How long a canceled or overdue job gets to stop by itself before it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How long abandoned runs get to unwind (they are aborted, not asked) before their
/// tasks are handed back anyway.
const ABANDON_WAIT: Duration = Duration::from_secs(1);

pub struct Scheduler {
    gateway: Arc<Gateway>,
    /// Identifies this process's leases: `kiln-{pid}-{random}`, so that an operator
    /// looking at `tasks.lease_owner` can tell which process holds a task.
    owner: String,
    tracker: TaskTracker,
    /// Fires when the drain's grace period is over: runs still going stop where they
    /// are, without canceling their upstream jobs, which the next claim resumes.
    abandon: CancellationToken,
}

impl Scheduler {
    pub fn new(gateway: Arc<Gateway>) -> Arc<Self> {
        let owner = format!("kiln-{}-{}", std::process::id(), Uuid::new_v4().simple());
        tracing::debug!(owner, "this process's leases are held as");
        Arc::new(Self { gateway, owner, tracker: TaskTracker::new(), abandon: CancellationToken::new() })
    }

    /// Starts the supervisor, which starts a dispatcher per enabled channel now and as
    /// channels appear, and the deadline sweeper. They stop claiming when `stop` (the
    /// dispatch stop token, parent of every channel's) fires; running jobs go on until
    /// [`Scheduler::drain`].
    pub fn start(self: &Arc<Self>, stop: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let me = Arc::clone(self);
        let supervisor = tokio::spawn(me.supervise(stop.clone()));
        let me = Arc::clone(self);
        let sweeper = tokio::spawn(async move { me.sweep_deadlines(stop).await });
        vec![supervisor, sweeper]
    }

    /// Follows the channel set's feed: each enabled channel not yet started gets its
    /// dispatcher. A retired channel's dispatcher ends by itself (its token fired).
    async fn supervise(self: Arc<Self>, stop: CancellationToken) {
        let mut feed = self.gateway.channels().subscribe();
        let mut started: HashMap<String, Arc<Channel>> = HashMap::new();
        loop {
            let router = Arc::clone(&feed.borrow_and_update());
            started.retain(|_, channel| !channel.is_retired());
            for channel in router.channels() {
                if !channel.enabled || channel.is_retired() {
                    continue;
                }
                if started.get(&channel.name).is_some_and(|running| Arc::ptr_eq(running, channel)) {
                    continue;
                }
                self.start_channel(channel);
                started.insert(channel.name.clone(), Arc::clone(channel));
            }
            tokio::select! {
                changed = feed.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Starts a channel's provider background work and its dispatcher.
    fn start_channel(self: &Arc<Self>, channel: &Arc<Channel>) {
        let runtime = Arc::new(ChannelHandle { gateway: Arc::clone(&self.gateway), channel: Arc::clone(channel) });
        channel.provider.start(runtime);
        let me = Arc::clone(self);
        let channel = Arc::clone(channel);
        tokio::spawn(async move {
            let stop = channel.stopped().clone();
            Arc::clone(&me).dispatch(Arc::clone(&channel), stop).await;
            // Jobs already running keep their provider (a cloud job's poller, say) until
            // they end, the channel retired or kiln draining; then its background work
            // stops.
            channel.jobs().close();
            channel.jobs().wait().await;
            channel.background().cancel();
            tracing::debug!(channel = %channel.name, "channel stopped");
        });
    }

    async fn dispatch(self: Arc<Self>, channel: Arc<Channel>, stop: CancellationToken) {
        // Work committed by any process for this channel wakes this dispatcher.
        self.gateway.notifier().register(&channel.name, &channel.wake);
        let cfg = self.gateway.config().tasks.clone();
        let slots = Arc::new(Semaphore::new(channel.max_concurrency as usize));
        let mut backoff = Duration::from_millis(100);
        let mut positions = Announcer::new(cfg.position_window, cfg.position_interval);
        'outer: loop {
            let permit = loop {
                tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => match permit {
                        Ok(p) => break p,
                        Err(_) => break 'outer,
                    },
                    _ = positions.due() => positions.flush(&self.gateway, &channel.name).await,
                    _ = stop.cancelled() => break 'outer,
                }
            };
            loop {
                if stop.is_cancelled() {
                    break 'outer;
                }
                if !channel.provider.can_start() {
                    tokio::select! {
                        _ = channel.wake.notified() => {}
                        _ = tokio::time::sleep(cfg.poll_interval) => {}
                        _ = positions.due() => positions.flush(&self.gateway, &channel.name).await,
                        _ = stop.cancelled() => break 'outer,
                    }
                    continue;
                }
                let window = positions.window_for_claim();
                let terms = ClaimTerms {
                    lease: cfg.lease,
                    deadline: channel.deadline,
                    window,
                    max_running: channel.max_concurrency,
                };
                match self.gateway.db().claim(&channel.name, &self.owner, &terms).await {
                    Ok(Some(claimed)) => {
                        positions.claimed(window);
                        backoff = Duration::from_millis(100);
                        let me = Arc::clone(&self);
                        let job_channel = Arc::clone(&channel);
                        self.tracker.spawn(channel.jobs().track_future(async move {
                            me.run(job_channel, claimed).await;
                            drop(permit);
                        }));
                        break;
                    }
                    Ok(None) => {
                        tokio::select! {
                            _ = channel.wake.notified() => {}
                            _ = tokio::time::sleep(cfg.poll_interval) => {}
                            _ = positions.due() => positions.flush(&self.gateway, &channel.name).await,
                            _ = stop.cancelled() => break 'outer,
                        }
                    }
                    Err(err) => {
                        tracing::error!(channel = %channel.name, error = %err, "cannot claim work; backing off");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.cancelled() => break 'outer,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
        tracing::debug!(channel = %channel.name, "dispatcher stopped");
    }

    async fn run(self: Arc<Self>, channel: Arc<Channel>, claimed: Claimed) {
        let gw = &self.gateway;
        gw.committed(&claimed.events, None);
        let task = claimed.task;
        let id = task.id;
        if task.attempts > MAX_ATTEMPTS {
            let finish = Finish::Failed {
                code: "interrupted".into(),
                message: format!("The task was interrupted {MAX_ATTEMPTS} times and was given up."),
            };
            if let Err(err) = gw.finish(id, finish).await {
                tracing::error!(task_id = %id, error = %err, "cannot fail an interrupted task");
            }
            return;
        }
        tracing::info!(task_id = %id, channel = %channel.name, attempt = task.attempts, "task started");
        let cancel = gw.runs().register(id);
        let heartbeat = self.spawn_heartbeat(id, cancel.clone());
        let outcome = if task.finishing_at.is_some() {
            // The provider finished in an earlier run, which stopped while making the
            // task's own outputs: only that is done again.
            tracing::info!(task_id = %id, "resuming the finishing step of a task");
            RunEnd::Provider(Ok(Outcome::Completed { metadata: task.metadata.clone() }))
        } else {
            self.execute(&channel, &task, cancel.clone()).await
        };
        let outcome = match outcome {
            RunEnd::Provider(Ok(Outcome::Completed { metadata })) => {
                match self.finishing(&task, metadata, &cancel).await {
                    Some(metadata) => RunEnd::Provider(Ok(Outcome::Completed { metadata })),
                    None => RunEnd::Abandoned,
                }
            }
            other => other,
        };
        heartbeat.abort();
        gw.runs().unregister(id);
        let finish = match outcome {
            RunEnd::Provider(Ok(Outcome::Completed { metadata })) => Some(succeeded(gw, &task, metadata).await),
            RunEnd::Provider(Ok(Outcome::Detached)) => {
                // An external worker finishes it through callbacks. Keep the claim until
                // the deadline so no dispatcher runs it again; the sweeper fails it if
                // nothing arrives by then.
                let until = task.deadline_at.map(|d| (d - Utc::now()).to_std().unwrap_or_default()).unwrap_or_default();
                if let Err(err) = gw.db().renew_lease(id, &self.owner, until + Duration::from_secs(60)).await {
                    tracing::error!(task_id = %id, error = %err, "cannot keep the claim on a detached task");
                }
                None
            }
            RunEnd::Provider(Err(err)) => {
                if let Some(cause) = &err.cause {
                    tracing::error!(task_id = %id, code = %err.code, error = format!("{cause:#}"), "provider failed");
                }
                Some(Finish::Failed { code: err.code, message: err.message })
            }
            RunEnd::Timeout => Some(timeout_finish(channel.deadline)),
            // Abandoned: handed back by the drain, for another run to finish.
            RunEnd::Canceled | RunEnd::Abandoned => None,
            RunEnd::Panicked(message) => {
                tracing::error!(task_id = %id, panic = %message, "provider panicked");
                Some(Finish::Failed {
                    code: "internal_error".into(),
                    message: "The generation failed unexpectedly.".into(),
                })
            }
            RunEnd::InputMissing => Some(Finish::Failed {
                code: "input_expired".into(),
                message: "The input picture is no longer stored.".into(),
            }),
        };
        if let Some(finish) = finish
            && let Err(err) = gw.finish(id, finish).await
        {
            // The lease lapses and the task is claimed again: nothing is lost.
            tracing::error!(task_id = %id, error = %err, "cannot record the end of a task");
        }
    }

    /// The finishing step (`outputs::finish_outputs`) under this run's lease: `None` when
    /// the task is no longer this run's or the step was interrupted; then the task is
    /// left running, for the next claim to finish.
    async fn finishing(
        &self,
        task: &Task,
        metadata: serde_json::Value,
        cancel: &CancellationToken,
    ) -> Option<serde_json::Value> {
        // Only a 3D task has files of its own to make: an image task needs no mark.
        if task.kind.main_role() != "model" {
            return Some(metadata);
        }
        let gw = &self.gateway;
        let claimed = gw
            .db()
            .claim_finishing(task.id, false, &self.owner, gw.config().tasks.lease, finishing_deadline(gw), &metadata)
            .await;
        match claimed {
            Ok(true) => {}
            Ok(false) => return None,
            Err(err) => {
                tracing::error!(task_id = %task.id, error = %err, "cannot mark a task as finishing");
                return None;
            }
        }
        self.finish_step(task, metadata, cancel).await
    }

    /// Makes the task's own files, stopped when the drain gives up on this run (like
    /// the provider's part) or when the heartbeat fires `cancel` (the task was canceled
    /// or taken over).
    async fn finish_step(
        &self,
        task: &Task,
        metadata: serde_json::Value,
        cancel: &CancellationToken,
    ) -> Option<serde_json::Value> {
        let stop = self.abandon.child_token();
        let watch = tokio::spawn({
            let (stop, cancel) = (stop.clone(), cancel.clone());
            async move {
                cancel.cancelled().await;
                stop.cancel();
            }
        });
        let finished = crate::outputs::finish_outputs(&self.gateway, task, metadata, &stop).await;
        watch.abort();
        match finished {
            crate::outputs::Finished::Done(metadata) => Some(metadata),
            crate::outputs::Finished::Interrupted => None,
        }
    }

    /// A push worker's `completed` for a 3D task: claims the finishing step for this
    /// process (`false` when another process has it or the task has ended) and runs it
    /// in the background as one of this scheduler's runs — its lease renewed by the
    /// heartbeat, waited for by the drain within the shutdown grace and handed back when
    /// the grace ends, stopped when the task is canceled. A process that dies leaves
    /// the mark: whoever claims the task next finishes it.
    pub async fn finish_detached(self: &Arc<Self>, task: Task, metadata: serde_json::Value) -> DbResult<bool> {
        let gw = &self.gateway;
        let lease = gw.config().tasks.lease;
        if !gw.db().claim_finishing(task.id, true, &self.owner, lease, finishing_deadline(gw), &metadata).await? {
            return Ok(false);
        }
        let me = Arc::clone(self);
        self.tracker.spawn(async move {
            let id = task.id;
            let cancel = me.gateway.runs().register(id);
            let heartbeat = me.spawn_heartbeat(id, cancel.clone());
            let finished = me.finish_step(&task, metadata, &cancel).await;
            heartbeat.abort();
            me.gateway.runs().unregister(id);
            if let Some(metadata) = finished
                && let Err(err) = me.gateway.finish(id, Finish::Succeeded { metadata }).await
            {
                // The lease lapses and the next claim finishes the task again.
                tracing::error!(task_id = %id, error = %err, "cannot record the end of a finished task");
            }
        });
        Ok(true)
    }

    async fn execute(&self, channel: &Arc<Channel>, task: &Task, cancel: CancellationToken) -> RunEnd {
        let gw = &self.gateway;
        let image = match task.picture_id {
            None => None,
            Some(picture_id) => match load_picture(gw, picture_id).await {
                Some(image) => Some(image),
                None => return RunEnd::InputMissing,
            },
        };
        let upstream = channel.model(&task.model).map(|m| m.upstream.clone()).unwrap_or_else(|| task.model.clone());
        let client_key = match client_key(gw, channel, task.id).await {
            Ok(key) => key,
            Err(end) => return end,
        };
        let job = Job {
            task_id: task.id,
            kind: task.kind,
            model: task.model.clone(),
            upstream_model: upstream,
            prompt: task.prompt.clone(),
            image,
            params: crate::outputs::provider_params(&task.params, channel.provider.as_ref()),
            attempt: task.attempts,
            deadline: task.deadline_at,
            upstream: Upstream::of(task),
            client_key,
        };
        let sink = Arc::new(TaskSink::new(Arc::clone(gw), task.clone()));
        let ctx = JobContext::new(sink, cancel.clone(), gw.spool_dir());
        let provider = Arc::clone(&channel.provider);
        let mut handle = tokio::spawn(async move { provider.run(job, ctx).await });
        let deadline =
            task.deadline_at.map(|d| (d - Utc::now()).to_std().unwrap_or(Duration::ZERO)).unwrap_or(channel.deadline);
        let end = tokio::select! {
            joined = &mut handle => match joined {
                Ok(result) => RunEnd::Provider(result),
                Err(err) if err.is_panic() => RunEnd::Panicked(panic_message(err.into_panic())),
                Err(_) => RunEnd::Canceled,
            },
            _ = tokio::time::sleep(deadline) => RunEnd::Timeout,
            _ = cancel.cancelled() => RunEnd::Canceled,
            _ = self.abandon.cancelled() => RunEnd::Abandoned,
        };
        if matches!(end, RunEnd::Abandoned) {
            // Not `cancel`: a cloud provider would cancel the upstream job, which the
            // process taking the task over resumes instead.
            handle.abort();
        } else if !handle.is_finished() {
            cancel.cancel();
            // A moment to stop cleanly (a cloud provider cancels the upstream job).
            let _ = tokio::time::timeout(STOP_GRACE, &mut handle).await;
            handle.abort();
        }
        end
    }

    fn spawn_heartbeat(self: &Arc<Self>, id: TaskId, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let lease = me.gateway.config().tasks.lease;
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            loop {
                // A run the drain abandons is handed back: renewing its lease then would
                // keep the process taking it over waiting for the lease to lapse.
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = me.abandon.cancelled() => return,
                }
                match me.gateway.db().renew_lease(id, &me.owner, lease).await {
                    Ok(true) => {}
                    // Handed back meanwhile: not ours to cancel (a cloud job would be
                    // canceled upstream under the process resuming it).
                    Ok(false) if me.abandon.is_cancelled() => return,
                    // Canceled, failed by the sweeper, or taken over: stop working on it.
                    Ok(false) => {
                        cancel.cancel();
                        return;
                    }
                    Err(err) => tracing::warn!(task_id = %id, error = %err, "cannot renew a lease"),
                }
            }
        })
    }

    /// Fails running tasks whose deadline passed, whichever process runs them, and once a
    /// minute forgets callback message ids too old to be replayed.
    async fn sweep_deadlines(self: Arc<Self>, stop: CancellationToken) {
        let every = self.gateway.config().tasks.poll_interval.min(Duration::from_secs(1));
        let mut last_forget = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            // One process sweeps at a time; another takes over within SWEEP_LEASE of its end.
            if !self.gateway.singleton(DEADLINE_SWEEP, SWEEP_LEASE).await {
                continue;
            }
            if last_forget.elapsed() >= Duration::from_secs(60) {
                last_forget = tokio::time::Instant::now();
                crate::callbacks::forget_old_messages(&self.gateway).await;
            }
            let overdue = match self.gateway.db().overdue(Utc::now()).await {
                Ok(ids) => ids,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot look for overdue tasks");
                    continue;
                }
            };
            for (id, channel) in overdue {
                let deadline = self
                    .gateway
                    .router()
                    .channel(&channel)
                    .map_or(self.gateway.config().tasks.deadline, |c| c.deadline);
                if let Err(err) = self.gateway.finish(id, timeout_finish(deadline)).await {
                    tracing::error!(task_id = %id, error = %err, "cannot fail an overdue task");
                }
            }
        }
    }

    /// Waits for running jobs up to `grace`, then abandons the rest and hands their
    /// tasks back to the queue: claimable at once by any process sharing the database
    /// (with SQLite, by the next start), their interrupted run not counted as an
    /// attempt. Detached tasks (on push workers) are not running here and stay claimed:
    /// their workers go on and call back whichever process answers.
    pub async fn drain(&self, grace: Duration) {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_ok() {
            return;
        }
        let left = self.gateway.runs().ids();
        self.abandon.cancel();
        if tokio::time::timeout(ABANDON_WAIT, self.tracker.wait()).await.is_err() {
            tracing::warn!("abandoned runs did not unwind in time; handing their tasks back anyway");
        }
        match self.gateway.db().hand_back(&self.owner, &left).await {
            Ok(handed) => {
                tracing::warn!(
                    left = left.len(),
                    handed_back = handed.len(),
                    "grace period over; unfinished tasks go back to the queue"
                );
                let mut channels: Vec<&str> = handed.iter().map(|(_, channel)| channel.as_str()).collect();
                channels.sort_unstable();
                channels.dedup();
                for channel in channels {
                    self.gateway.committed(&[], Some(channel));
                }
            }
            Err(err) => tracing::error!(
                left = left.len(),
                error = %err,
                "grace period over; cannot hand unfinished tasks back: they run again when their leases lapse"
            ),
        }
    }
}

/// A channel's side of the core, as its provider's background work sees it.
struct ChannelHandle {
    gateway: Arc<Gateway>,
    channel: Arc<Channel>,
}

#[async_trait]
impl ChannelRuntime for ChannelHandle {
    async fn placement_loads(&self) -> anyhow::Result<Vec<(String, u32)>> {
        Ok(self.gateway.db().placement_loads(&self.channel.name).await?)
    }

    async fn release_placement(&self, placement: &str) -> anyhow::Result<u64> {
        let released = self.gateway.db().release_placement(&self.channel.name, placement).await?;
        if released > 0 {
            self.gateway.committed(&[], Some(&self.channel.name));
        }
        Ok(released)
    }

    fn set_available(&self, available: bool) {
        self.channel.set_healthy(available);
    }

    fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }

    fn submission(&self, taken: bool) {
        if taken {
            self.channel.breaker.succeeded();
        } else if self.channel.breaker.failed() {
            tracing::warn!(
                channel = %self.channel.name,
                rest = ?self.channel.breaker.open_for(),
                "submissions keep failing; the channel takes no new tasks for a while"
            );
        }
    }

    fn wake(&self) {
        self.channel.wake.notify_one();
    }

    fn shutdown(&self) -> CancellationToken {
        self.channel.background().clone()
    }
}

/// Coalesces a channel's queue-position announcements: every claim moves every waiting
/// task up one place, and rewriting a hundred positions per claim would make a fast
/// channel spend its single SQLite writer on announcements. A claim announces when the
/// last announcement is at least `interval` old; otherwise the dispatcher announces once
/// the interval is up, so a client still waiting learns its current position within one
/// interval (a task that starts sooner goes from its last announced place to running).
struct Announcer {
    window: u32,
    interval: Duration,
    last: Option<tokio::time::Instant>,
    pending: bool,
}

impl Announcer {
    fn new(window: u32, interval: Duration) -> Self {
        Self { window, interval, last: None, pending: false }
    }

    fn is_due(&self, now: tokio::time::Instant) -> bool {
        self.last.is_none_or(|last| now.duration_since(last) >= self.interval)
    }

    /// The window a claim made now should announce: all of it when due, else none.
    fn window_for_claim(&self) -> u32 {
        if self.is_due(tokio::time::Instant::now()) { self.window } else { 0 }
    }

    /// A claim with `window` took a task, which moved every waiting task up a place: it
    /// announced them, or the announcement is owed. A claim that took nothing moved
    /// nothing, and must not call this: an idle dispatcher would otherwise owe an
    /// announcement after each look for work, and so look again every interval.
    fn claimed(&mut self, window: u32) {
        if window > 0 {
            self.last = Some(tokio::time::Instant::now());
            self.pending = false;
        } else {
            self.pending = self.window > 0;
        }
    }

    /// Resolves when a deferred announcement is due; never while none is pending.
    async fn due(&self) {
        match (self.pending, self.last) {
            (true, Some(last)) => tokio::time::sleep_until(last + self.interval).await,
            _ => std::future::pending().await,
        }
    }

    async fn flush(&mut self, gateway: &Gateway, channel: &str) {
        self.pending = false;
        self.last = Some(tokio::time::Instant::now());
        match gateway.db().announce_positions(channel, self.window).await {
            Ok(events) => gateway.committed(&events, None),
            Err(err) => {
                // Try again after another interval.
                self.pending = true;
                tracing::warn!(channel, error = %err, "cannot announce queue positions");
            }
        }
    }
}

enum RunEnd {
    Provider(Result<Outcome, crate::providers::ProviderError>),
    Timeout,
    Canceled,
    /// The drain gave up on it; its task is handed back.
    Abandoned,
    Panicked(String),
    InputMissing,
}

/// A task succeeds only with the output its kind promises (a model for a 3D task, an
/// image for a text-to-image one); a provider that ends without it has failed.
async fn succeeded(gw: &Gateway, task: &Task, metadata: serde_json::Value) -> Finish {
    let role = task.kind.main_role();
    match gw.db().list_artifacts(task.id).await {
        Ok(outputs) if outputs.iter().any(|a| a.role == role) => Finish::Succeeded { metadata },
        Ok(_) => Finish::Failed {
            code: "no_output".into(),
            message: format!("The provider reported success but produced no {role}."),
        },
        // Unknown: let the provider's word stand rather than fail a finished task.
        Err(err) => {
            tracing::warn!(task_id = %task.id, error = %err, "cannot list outputs to check a success");
            Finish::Succeeded { metadata }
        }
    }
}

/// The deadline a finishing task is given: room for several conversions, each under its
/// own time ceiling, so that the deadline sweeper does not fail a task whose model exists.
pub fn finishing_deadline(gw: &Gateway) -> chrono::DateTime<Utc> {
    let room = gw.config().convert.timeout.saturating_mul(8) + Duration::from_secs(60);
    Utc::now() + chrono::Duration::from_std(room).unwrap_or(chrono::Duration::hours(1))
}

pub fn timeout_finish(deadline: Duration) -> Finish {
    Finish::Failed {
        code: "generation_timeout".into(),
        message: format!("Generation timeout: the task did not finish within {} s.", deadline.as_secs()),
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The client's own provider key of a task, opened, on channels that take them.
async fn client_key(gw: &Gateway, channel: &Channel, id: TaskId) -> Result<Option<Secret>, RunEnd> {
    if !channel.client_keys {
        return Ok(None);
    }
    let sealed = match gw.db().client_secret(id).await {
        Ok(Some(sealed)) => sealed,
        Ok(None) => return Ok(None),
        Err(err) => {
            tracing::error!(task_id = %id, error = %err, "cannot read a task's client key");
            return Err(RunEnd::Provider(Err(crate::providers::ProviderError::internal(err))));
        }
    };
    match gw.sealer().map(|s| s.open(&sealed)) {
        Ok(Ok(key)) => Ok(Some(key)),
        _ => {
            tracing::error!(task_id = %id, "a task's client key does not open with this server's sealing key");
            Err(RunEnd::Provider(Err(crate::providers::ProviderError::new(
                "client_key_unreadable",
                "The provider key sent with this task cannot be read by this server (its sealing key changed).",
            ))))
        }
    }
}

async fn load_picture(gw: &Gateway, id: Uuid) -> Option<InputImage> {
    let picture = match gw.db().get_picture(id).await {
        Ok(Some(p)) if p.expired_at.is_none() => p,
        Ok(_) => return None,
        Err(err) => {
            tracing::error!(picture_id = %id, error = %err, "cannot read a picture record");
            return None;
        }
    };
    match gw.storage().get(&picture.key).await {
        Ok(bytes) => Some(InputImage {
            bytes,
            format: picture.format,
            content_type: picture.content_type,
            width: picture.width,
            height: picture.height,
        }),
        Err(err) => {
            tracing::error!(picture_id = %id, error = %err, "cannot read a stored picture");
            None
        }
    }
}

/// Records what a running job reports: progress events and stored outputs.
pub struct TaskSink {
    gateway: Arc<Gateway>,
    task: Task,
}

impl TaskSink {
    pub fn new(gateway: Arc<Gateway>, task: Task) -> Self {
        Self { gateway, task }
    }
}

#[async_trait]
impl JobSink for TaskSink {
    async fn progress(&self, progress: u8, stage: &str) -> anyhow::Result<()> {
        Ok(self.gateway.record_progress(self.task.id, progress, stage).await?)
    }

    async fn output(&self, output: Output) -> anyhow::Result<()> {
        let name = output.name.clone();
        let new = NewOutput {
            name: output.name,
            role: output.role,
            content_type: output.content_type,
            metadata: output.metadata,
            body: OutputBody::Spooled(output.file),
        };
        match self.gateway.record_output(&self.task, new).await? {
            Recorded::New(_) | Recorded::Again(_) | Recorded::Ended => {}
            Recorded::Conflict(_) => tracing::warn!(
                task_id = %self.task.id,
                name,
                "a re-run made another file under a name already recorded; the first is kept"
            ),
        }
        Ok(())
    }

    async fn submitting(&self, in_flight: bool) -> anyhow::Result<()> {
        Ok(self.gateway.db().mark_submitting(self.task.id, in_flight).await?)
    }

    async fn submitted(&self, job_id: &str, placement: Option<&str>) -> anyhow::Result<()> {
        if let Some(event) = self.gateway.db().record_submission(self.task.id, job_id, placement).await? {
            self.gateway.committed(&[event], None);
        }
        Ok(())
    }

    async fn place(&self, placement: &str) -> anyhow::Result<()> {
        Ok(self.gateway.db().place(self.task.id, placement).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn announcements_are_coalesced_to_one_per_interval_and_never_dropped() {
        let interval = Duration::from_millis(200);
        let mut positions = Announcer::new(100, interval);
        assert_eq!(positions.window_for_claim(), 100, "the first claim announces");
        positions.claimed(100);
        let announced = tokio::time::Instant::now();
        assert_eq!(positions.window_for_claim(), 0, "a claim right after defers");
        positions.claimed(0);
        assert_eq!(positions.window_for_claim(), 0);
        positions.claimed(0);
        tokio::time::timeout(Duration::from_secs(10), positions.due()).await.expect("the deferred one comes due");
        assert!(announced.elapsed() >= interval, "not before the interval is up");
        positions.pending = false;
        positions.last = Some(tokio::time::Instant::now());
        let idle = tokio::time::timeout(interval * 2, positions.due()).await;
        assert!(idle.is_err(), "nothing is due while nothing is pending");
        assert_eq!(positions.window_for_claim(), 100, "a claim after a quiet interval announces at once");
        assert_eq!(Announcer::new(0, Duration::ZERO).window_for_claim(), 0, "window 0 never announces");
    }

    #[tokio::test]
    async fn a_look_for_work_that_finds_none_owes_no_announcement() {
        let interval = Duration::from_millis(50);
        let mut positions = Announcer::new(100, interval);
        positions.claimed(positions.window_for_claim());
        // Idle: the dispatcher looks again and again, taking nothing (no `claimed`).
        assert_eq!(positions.window_for_claim(), 0);
        let idle = tokio::time::timeout(interval * 3, positions.due()).await;
        assert!(idle.is_err(), "an idle dispatcher is not woken every interval");
    }
}
