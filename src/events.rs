//! Live fan-out of task events. The database log is the truth; this bus only tells
//! subscribers that new entries exist. A follower replays the log from where its client
//! stopped, then takes live events, filling any gap from the log again, so a reconnect
//! with `Last-Event-ID` misses nothing and a late subscriber gets the whole history.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use futures::Stream;
use tokio::{sync::broadcast, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    db::Db,
    tasks::{TaskEvent, TaskId},
};

const CHANNEL_CAPACITY: usize = 256;
/// Renderings kept per event: one per API face that streams events.
pub const RENDERINGS: usize = 4;

/// A committed event as followers receive it. A live event is shared by every
/// subscriber of its task, with the wire encodings faces made of it, so an event going
/// to ten thousand streams is encoded once per face rather than once per stream.
pub struct Published {
    pub event: TaskEvent,
    renderings: [OnceLock<Option<Bytes>>; RENDERINGS],
}

impl Published {
    pub fn new(event: TaskEvent) -> Arc<Self> {
        Arc::new(Self { event, renderings: Default::default() })
    }

    /// The rendering kept in `slot`, made by `render` the first time it is asked for.
    pub fn rendered(&self, slot: usize, render: impl FnOnce(&TaskEvent) -> Option<Bytes>) -> Option<Bytes> {
        match self.renderings.get(slot) {
            Some(cell) => cell.get_or_init(|| render(&self.event)).clone(),
            None => render(&self.event),
        }
    }
}

#[derive(Default)]
pub struct EventBus {
    topics: Mutex<HashMap<TaskId, broadcast::Sender<Arc<Published>>>>,
}

impl EventBus {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Publishes committed events. Call only after the transaction that wrote them.
    pub fn publish(&self, events: &[TaskEvent]) {
        let Ok(mut topics) = self.topics.lock() else { return };
        for event in events {
            if let Some(sender) = topics.get(&event.task_id) {
                let _ = sender.send(Published::new(event.clone()));
                if event.kind.is_terminal() {
                    topics.remove(&event.task_id);
                }
            }
        }
    }

    fn subscribe(self: &Arc<Self>, id: TaskId) -> Subscription {
        let (sender, receiver) = match self.topics.lock() {
            Ok(mut topics) => {
                let sender = topics.entry(id).or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0);
                (sender.downgrade(), sender.subscribe())
            }
            Err(_) => {
                let (sender, receiver) = broadcast::channel(1);
                (sender.downgrade(), receiver)
            }
        };
        Subscription { bus: Arc::clone(self), id, sender, receiver }
    }

    /// Sends every follower in this process back to the log, because notifications may
    /// have been lost (the connection that hears other processes was re-made). Dropping
    /// the topics closes their channels: each follower, once it has taken what was
    /// already published, subscribes again and re-reads the log from its last event.
    pub fn resync(&self) {
        if let Ok(mut topics) = self.topics.lock() {
            topics.clear();
        }
    }

    /// Number of tasks with live subscribers (for metrics and tests).
    pub fn topics(&self) -> usize {
        self.topics.lock().map(|t| t.len()).unwrap_or(0)
    }
}

struct Subscription {
    bus: Arc<EventBus>,
    id: TaskId,
    /// The channel subscribed to: the topic may have been dropped and made again since
    /// (a terminal event, [`EventBus::resync`]), and the new one is not this one's to drop.
    sender: broadcast::WeakSender<Arc<Published>>,
    receiver: broadcast::Receiver<Arc<Published>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut topics) = self.bus.topics.lock()
            && let Some(sender) = topics.get(&self.id)
            && self.sender.upgrade().is_some_and(|mine| mine.same_channel(sender))
            && sender.receiver_count() <= 1
        {
            topics.remove(&self.id);
        }
    }
}

/// Whether a task has ended (then its log holds its terminal event).
async fn ended(db: &Db, id: TaskId) -> bool {
    matches!(db.get_task(id).await, Ok(Some(task)) if task.status.is_terminal())
}

/// The events of a task after `after`, in order, ending after the terminal event (or at
/// once when the task has ended and `after` is past it) or when `stop` fires. When it has
/// heard nothing for `poll`, it re-reads the log, so a lost notification costs latency,
/// never an event.
pub fn follow(
    db: Db,
    bus: Arc<EventBus>,
    id: TaskId,
    after: i64,
    poll: Duration,
    stop: CancellationToken,
) -> impl Stream<Item = Arc<Published>> + Send + 'static {
    // Longer is never; capped so that the clock arithmetic below cannot overflow.
    let poll = poll.min(Duration::from_secs(365 * 24 * 3600));
    async_stream::stream! {
        // Subscribe before reading the log, so nothing falls between the two.
        let mut sub = bus.subscribe(id);
        let mut last = after;
        let mut catch_up = true;
        // Kept across iterations: with thousands of followers, registering a new timer
        // and a new cancellation waiter for every event would cost more than the event.
        let stopped = stop.cancelled_owned();
        tokio::pin!(stopped);
        let fallback = tokio::time::sleep(poll);
        tokio::pin!(fallback);
        let mut heard = Instant::now();
        loop {
            if catch_up {
                catch_up = false;
                heard = Instant::now();
                match db.list_events(id, last).await {
                    // Nothing after `last` of a task that has ended: the client already
                    // has the terminal event (it resumed after it), and nothing follows.
                    Ok(events) if events.is_empty() && ended(&db, id).await => return,
                    Ok(events) => {
                        for event in events {
                            last = event.seq;
                            let terminal = event.kind.is_terminal();
                            yield Published::new(event);
                            if terminal {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(task_id = %id, error = %err, "cannot read the event log; ending the stream");
                        return;
                    }
                }
            }
            // The live event first: when it is ready, as it is at nearly every wake-up,
            // the shutdown future and the timer are not polled (each poll of them takes a
            // lock shared by every follower); their wake-ups stay registered meanwhile.
            tokio::select! {
                biased;
                received = sub.receiver.recv() => {
                    heard = Instant::now();
                    match received {
                        Ok(published) if published.event.seq <= last => {}
                        Ok(published) if published.event.seq == last + 1 => {
                            last = published.event.seq;
                            let terminal = published.event.kind.is_terminal();
                            yield published;
                            if terminal {
                                return;
                            }
                        }
                        // A gap (events published out of order) or a lag: the log has them.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                        Err(broadcast::error::RecvError::Closed) => {
                            drop(sub);
                            sub = bus.subscribe(id);
                            catch_up = true;
                        }
                    }
                }
                _ = &mut stopped => return,
                _ = &mut fallback => {
                    // The timer is not moved at every event; when it fires early for a
                    // follower that heard something since, it is set again from then.
                    let quiet_until = heard + poll;
                    if Instant::now() >= quiet_until {
                        catch_up = true;
                        fallback.as_mut().reset(Instant::now() + poll);
                    } else {
                        fallback.as_mut().reset(quiet_until);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resync_closes_every_topic_and_an_old_subscription_leaves_the_new_topic_alone() {
        let bus = EventBus::new();
        let id = TaskId::new();
        let mut old = bus.subscribe(id);
        bus.resync();
        assert_eq!(bus.topics(), 0);
        assert!(matches!(old.receiver.try_recv(), Err(broadcast::error::TryRecvError::Closed)), "sent back to the log");

        // Another follower of the task subscribes again before this one lets go.
        let new = bus.subscribe(id);
        drop(old);
        assert_eq!(bus.topics(), 1, "the new topic is not the old subscription's to drop");
        drop(new);
        assert_eq!(bus.topics(), 0);
    }
}
