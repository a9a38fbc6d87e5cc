//! Notifications between kiln processes sharing one PostgreSQL database, over
//! LISTEN/NOTIFY on one channel, [`CHANNEL`].
//!
//! A process publishes what it committed to its own followers at once, then tells the
//! others with `pg_notify` (sent in order by one task, so a commit never waits for it).
//! Every process listens on a dedicated connection and hands what it hears to its own
//! bus and dispatchers; it skips its own notifications, which it already delivered.
//! Events travel whole when they fit in PostgreSQL's 8000-byte payload; a larger one
//! travels as its task id and sequence number, and the listener reads it from the log.
//! Notifications are hints ([`crate::notify`]). Those sent while a process was not
//! listening (its connection lost, not yet re-made) never reach it, so each time the
//! listener (re)connects, the process's followers re-read the log and its dispatchers
//! look for work.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::{
    sync::{Notify, mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    db::rows,
    events::EventBus,
    notify::{Notifier, Wakers},
    tasks::{TaskEvent, TaskId},
};

/// The LISTEN/NOTIFY channel every kiln process of a database uses.
pub const CHANNEL: &str = "kiln";

/// PostgreSQL refuses payloads of 8000 bytes or more; a margin keeps us clear of it.
const MAX_PAYLOAD: usize = 7900;

/// The listener's wait before reconnecting, doubled after each failure up to the cap.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// One notification.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    /// The process that sent it, which skips it when it comes back.
    from: Uuid,
    #[serde(flatten)]
    body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Body {
    /// Committed events, whole.
    Events(Vec<TaskEvent>),
    /// A task's events after `after` are in the log (too large to send whole).
    Since { task: TaskId, after: i64 },
    /// Work for a channel's dispatcher.
    Work(String),
}

pub struct PgNotifier {
    pool: PgPool,
    /// This process, as its notifications name it.
    origin: Uuid,
    bus: Arc<EventBus>,
    wakers: Arc<Wakers>,
    /// Payloads for the sender task, which ends when this notifier is dropped.
    outbox: mpsc::UnboundedSender<Outgoing>,
}

/// What the sender task is handed, in order.
enum Outgoing {
    Payload(String),
    /// Told once every payload queued before it was sent (or failed).
    Flush(oneshot::Sender<()>),
}

impl PgNotifier {
    pub fn new(pool: PgPool) -> Arc<Self> {
        let (outbox, queue) = mpsc::unbounded_channel();
        tokio::spawn(send(pool.clone(), queue));
        Arc::new(Self {
            pool,
            origin: Uuid::new_v4(),
            bus: EventBus::new(),
            wakers: Arc::new(Wakers::default()),
            outbox,
        })
    }

    fn post(&self, body: Body) {
        match serde_json::to_string(&Message { from: self.origin, body }) {
            Ok(payload) => {
                // Only fails once the sender task is gone, at the end of the process.
                let _ = self.outbox.send(Outgoing::Payload(payload));
            }
            Err(err) => tracing::warn!(error = %err, "cannot encode a notification"),
        }
    }
}

impl Notifier for PgNotifier {
    fn events(&self, events: &[TaskEvent]) {
        self.bus.publish(events);
        // As many events per notification as fit; one that never fits goes as a pointer
        // into the log.
        let mut batch: Vec<TaskEvent> = Vec::new();
        let mut size = 0;
        for event in events {
            let len = serde_json::to_string(event).map(|s| s.len()).unwrap_or(usize::MAX);
            if len > MAX_PAYLOAD - 100 {
                // The smaller ones before it go first, so the others hear them in order.
                if !batch.is_empty() {
                    self.post(Body::Events(std::mem::take(&mut batch)));
                    size = 0;
                }
                self.post(Body::Since { task: event.task_id, after: event.seq - 1 });
                continue;
            }
            if size + len + 1 > MAX_PAYLOAD - 100 && !batch.is_empty() {
                self.post(Body::Events(std::mem::take(&mut batch)));
                size = 0;
            }
            size += len + 1;
            batch.push(event.clone());
        }
        if !batch.is_empty() {
            self.post(Body::Events(batch));
        }
    }

    fn work(&self, channel: &str) {
        self.wakers.wake(channel);
        self.post(Body::Work(channel.to_owned()));
    }

    fn bus(&self) -> &Arc<EventBus> {
        &self.bus
    }

    fn register(&self, channel: &str, wake: &Arc<Notify>) {
        self.wakers.register(channel, wake);
    }

    fn listen(&self, stop: CancellationToken) -> Option<JoinHandle<()>> {
        // Its own pool of one connection: the listening connection is held for as long
        // as the process runs, and must not take a place in the pool requests use.
        let options = (*self.pool.connect_options()).clone();
        let listen_pool =
            PgPoolOptions::new().max_connections(1).acquire_timeout(super::ACQUIRE_TIMEOUT).connect_lazy_with(options);
        let listener = Listener {
            pool: self.pool.clone(),
            listen_pool,
            origin: self.origin,
            bus: Arc::clone(&self.bus),
            wakers: Arc::clone(&self.wakers),
        };
        Some(tokio::spawn(listener.run(stop)))
    }

    fn flushed(&self) -> BoxFuture<'static, ()> {
        let (done, sent) = oneshot::channel();
        let _ = self.outbox.send(Outgoing::Flush(done));
        Box::pin(async move {
            let _ = sent.await;
        })
    }
}

/// Sends queued payloads in order, several per round trip when they pile up.
async fn send(pool: PgPool, mut queue: mpsc::UnboundedReceiver<Outgoing>) {
    let mut received = Vec::new();
    let mut batch = Vec::new();
    let mut flushes = Vec::new();
    while queue.recv_many(&mut received, 64).await > 0 {
        for item in received.drain(..) {
            match item {
                Outgoing::Payload(payload) => batch.push(payload),
                Outgoing::Flush(done) => flushes.push(done),
            }
        }
        if !batch.is_empty() {
            let sent = sqlx::query(
                "SELECT pg_notify($1, payload) FROM UNNEST($2::text[]) WITH ORDINALITY AS p(payload, n) ORDER BY n",
            )
            .bind(CHANNEL)
            .bind(&batch)
            .execute(&pool)
            .await;
            if let Err(err) = sent {
                // The other processes fall back on their polls.
                tracing::warn!(error = %err, lost = batch.len(), "cannot notify the other kiln processes");
            }
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// What the listening task needs of the notifier.
struct Listener {
    /// For reading events too large to be notified whole.
    pool: PgPool,
    listen_pool: PgPool,
    origin: Uuid,
    bus: Arc<EventBus>,
    wakers: Arc<Wakers>,
}

impl Listener {
    /// Listens until `stop`, reconnecting with backoff when the connection fails.
    async fn run(self, stop: CancellationToken) {
        let mut retry = FIRST_RETRY;
        loop {
            let failed = tokio::select! {
                _ = stop.cancelled() => return,
                failed = self.listen_once(&stop, &mut retry) => failed,
            };
            tracing::warn!(error = %failed, retry_in = ?retry, "lost the notifications of the other kiln processes; reconnecting");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(MAX_RETRY);
        }
    }

    /// Listens on one connection until it fails; resets `retry` once connected.
    async fn listen_once(&self, stop: &CancellationToken, retry: &mut Duration) -> sqlx::Error {
        let mut listener = match PgListener::connect_with(&self.listen_pool).await {
            Ok(listener) => listener,
            Err(err) => return err,
        };
        // A lost connection ends this attempt; the reconnection goes through the backoff.
        listener.eager_reconnect(false);
        if let Err(err) = listener.listen(CHANNEL).await {
            return err;
        }
        *retry = FIRST_RETRY;
        // Whatever was notified while this process was not listening (before the first
        // LISTEN, or between a lost connection and this one) is lost; the log and the
        // queue have it. Followers re-read the log, dispatchers look for work.
        self.bus.resync();
        self.wakers.wake_all();
        loop {
            // `try_recv`, unlike `recv`, reports a lost connection (as `None`).
            match listener.try_recv().await {
                Ok(Some(notification)) => self.deliver(notification.payload()).await,
                Ok(None) => return sqlx::Error::PoolClosed,
                Err(err) => return err,
            }
            if stop.is_cancelled() {
                return sqlx::Error::PoolClosed;
            }
        }
    }

    async fn deliver(&self, payload: &str) {
        let message: Message = match serde_json::from_str(payload) {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(error = %err, "ignoring a notification kiln cannot read");
                return;
            }
        };
        if message.from == self.origin {
            return;
        }
        match message.body {
            Body::Events(events) => self.bus.publish(&events),
            Body::Since { task, after } => {
                let rows = sqlx::query("SELECT * FROM task_events WHERE task_id = $1 AND seq > $2 ORDER BY seq")
                    .bind(task.to_string())
                    .bind(after)
                    .fetch_all(&self.pool)
                    .await;
                match rows
                    .map_err(crate::db::DbError::from)
                    .and_then(|found| found.iter().map(rows::event).collect::<Result<Vec<_>, _>>())
                {
                    Ok(events) => self.bus.publish(&events),
                    Err(err) => tracing::warn!(task_id = %task, error = %err, "cannot read notified events"),
                }
            }
            Body::Work(channel) => self.wakers.wake(&channel),
        }
    }
}
