//! Notifications between the processes that share one database: committed task events
//! for their followers, and work for a channel's dispatcher. The database connection
//! hands out its notifier ([`crate::db::Database::notifier`]): one process on SQLite
//! tells only itself ([`Local`]); processes sharing a PostgreSQL database tell each
//! other over LISTEN/NOTIFY (`crate::db::PgNotifier`).
//!
//! Notifications are hints. The event log is the truth (a follower replays it and
//! re-reads it after a quiet spell, [`crate::events::follow`]), and a dispatcher also
//! polls, so a lost notification costs latency, never an event or a task.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use futures::future::BoxFuture;
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{events::EventBus, tasks::TaskEvent};

/// What a committed transaction tells the processes sharing the database.
pub trait Notifier: Send + Sync {
    /// Committed events, for the followers of their tasks in every process.
    fn events(&self, events: &[TaskEvent]);

    /// Work for the channel named `channel` (a task queued or moved there, a place
    /// freed): its dispatcher wakes in every process.
    fn work(&self, channel: &str);

    /// This process's followers subscribe here.
    fn bus(&self) -> &Arc<EventBus>;

    /// This process's dispatchers: the dispatcher of `channel` waits on `wake`, which
    /// [`Notifier::work`] for that channel notifies. A later registration for the same
    /// channel (its replacement after an edit) takes over.
    fn register(&self, channel: &str, wake: &Arc<Notify>);

    /// Starts hearing what the other processes commit, until `stop`; `None` when there
    /// are none to hear (SQLite). The app calls it once it serves.
    fn listen(&self, stop: CancellationToken) -> Option<JoinHandle<()>> {
        let _ = stop;
        None
    }

    /// Resolves once everything notified so far has gone out to the other processes.
    /// A stopping process waits for it (briefly), so the last events it committed — the
    /// ends of tasks it drained, the tasks it handed back — are heard at once rather
    /// than at the others' next poll.
    fn flushed(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// The dispatchers' wake-ups in this process, by channel name.
#[derive(Default)]
pub struct Wakers {
    by_channel: Mutex<HashMap<String, Weak<Notify>>>,
}

impl Wakers {
    pub fn register(&self, channel: &str, wake: &Arc<Notify>) {
        if let Ok(mut map) = self.by_channel.lock() {
            // Gone channels' entries go as new ones come.
            map.retain(|_, w| w.strong_count() > 0);
            map.insert(channel.to_owned(), Arc::downgrade(wake));
        }
    }

    /// Wakes the dispatcher of `channel` in this process, if it has one.
    pub fn wake(&self, channel: &str) {
        let wake = self.by_channel.lock().ok().and_then(|map| map.get(channel).and_then(Weak::upgrade));
        if let Some(wake) = wake {
            wake.notify_one();
        }
    }

    /// Wakes every dispatcher in this process: wake-ups from other processes may have
    /// been lost, and each looks for work once more.
    pub fn wake_all(&self) {
        let wakes: Vec<Arc<Notify>> =
            self.by_channel.lock().map(|map| map.values().filter_map(Weak::upgrade).collect()).unwrap_or_default();
        for wake in wakes {
            wake.notify_one();
        }
    }
}

/// One process alone on its database (SQLite): notifications stay in the process.
#[derive(Default)]
pub struct Local {
    bus: Arc<EventBus>,
    wakers: Wakers,
}

impl Local {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

impl Notifier for Local {
    fn events(&self, events: &[TaskEvent]) {
        self.bus.publish(events);
    }

    fn work(&self, channel: &str) {
        self.wakers.wake(channel);
    }

    fn bus(&self) -> &Arc<EventBus> {
        &self.bus
    }

    fn register(&self, channel: &str, wake: &Arc<Notify>) {
        self.wakers.register(channel, wake);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn work_wakes_the_registered_dispatcher_and_its_replacement_takes_over() {
        let local = Local::new();
        let first = Arc::new(Notify::new());
        local.register("relief", &first);
        local.work("relief");
        tokio::time::timeout(Duration::from_secs(1), first.notified()).await.expect("woken");

        let second = Arc::new(Notify::new());
        local.register("relief", &second);
        local.work("relief");
        tokio::time::timeout(Duration::from_secs(1), second.notified()).await.expect("the replacement is woken");
        let old = tokio::time::timeout(Duration::from_millis(50), first.notified()).await;
        assert!(old.is_err(), "the replaced dispatcher is not");

        drop(second);
        local.work("relief");
        local.work("nobody");
    }

    #[tokio::test]
    async fn wake_all_wakes_every_registered_dispatcher() {
        let wakers = Wakers::default();
        let (relief, echo) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        wakers.register("relief", &relief);
        wakers.register("echo", &echo);
        wakers.wake_all();
        tokio::time::timeout(Duration::from_secs(1), relief.notified()).await.expect("relief woken");
        tokio::time::timeout(Duration::from_secs(1), echo.notified()).await.expect("echo woken");
    }
}
