//! The live set of channels: the file's channels and the database's in one [`Router`],
//! swapped atomically when channels are added, edited or removed while kiln runs.
//!
//! Readers take the current router with [`ChannelSet::current`] (lock-free) and keep it
//! for the length of one operation; a swap never disturbs them. The scheduler follows
//! the change feed ([`ChannelSet::subscribe`]) to start a dispatcher for each channel that
//! appears; a channel that leaves is retired (its token fires), which stops its
//! dispatcher.
//!
//! An apply keeps every channel whose origin and configuration did not change — the same
//! `Arc<Channel>`, so its provider, breaker, health and running jobs carry on untouched.
//! A changed channel is built anew through the [`Registry`] and the old one retired: it
//! claims nothing more, its running jobs finish on the old provider, and then the old
//! provider's background work ends.

use std::{collections::BTreeMap, collections::HashSet, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, MutexGuard, watch};
use tokio_util::sync::CancellationToken;

use super::{Channel, Origin, Router};
use crate::{
    config::{ChannelConfig, Config, ConfigErrors},
    providers::Registry,
};

/// A channel as it should be: where it is defined, and how.
#[derive(Debug, Clone)]
pub struct ChannelSpec {
    pub origin: Origin,
    pub config: ChannelConfig,
}

impl ChannelSpec {
    /// The key problems with this channel are reported under (`channels[2]` for the
    /// file's third channel, `channels.{name}` for a stored one).
    fn key(&self, index: usize) -> String {
        match self.origin {
            Origin::File => format!("channels[{index}]"),
            Origin::Database(_) => format!("channels.{}", self.config.name),
        }
    }
}

/// What an apply changed, by channel name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    /// Edited (or enabled, or disabled): a new channel under the same name.
    pub replaced: Vec<String>,
    pub removed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.replaced.is_empty() && self.removed.is_empty()
    }
}

pub struct ChannelSet {
    current: ArcSwap<Router>,
    feed: watch::Sender<Arc<Router>>,
    registry: Registry,
    /// `tasks.deadline`: a channel's deadline when it sets none.
    deadline: Duration,
    /// `tasks.default_models`.
    default_models: BTreeMap<String, String>,
    /// The dispatch stop token, parent of every channel's `stopped`.
    stop: CancellationToken,
    /// One change at a time: an edit reads the stored channels, writes, and applies
    /// under it, so two edits cannot apply each other's stale view.
    edits: Mutex<()>,
}

impl ChannelSet {
    /// The file's channels, built through `registry`. Unknown provider types and provider
    /// set-up failures are reported like any other configuration problem. `stop` is the
    /// dispatch stop token: when it fires, every channel stops.
    pub fn from_config(config: &Config, registry: Registry, stop: CancellationToken) -> Result<Self, ConfigErrors> {
        let empty = Arc::new(Router::new(Vec::new(), &config.tasks.default_models));
        let (feed, _) = watch::channel(Arc::clone(&empty));
        let set = Self {
            current: ArcSwap::new(empty),
            feed,
            registry,
            deadline: config.tasks.deadline,
            default_models: config.tasks.default_models.clone(),
            stop,
            edits: Mutex::new(()),
        };
        let specs = config.channels.iter().map(|c| ChannelSpec { origin: Origin::File, config: c.clone() }).collect();
        set.apply(specs)?;
        Ok(set)
    }

    /// The channels now. Keep the router for one operation, not longer: it does not
    /// follow later changes.
    pub fn current(&self) -> Arc<Router> {
        self.current.load_full()
    }

    /// The change feed: the router after each change (the current one first).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Router>> {
        self.feed.subscribe()
    }

    /// The provider types channels may have.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// `tasks.deadline`, which a channel without its own deadline gets.
    pub fn default_deadline(&self) -> Duration {
        self.deadline
    }

    /// Holds off other edits while one reads, writes and applies.
    pub async fn edit(&self) -> MutexGuard<'_, ()> {
        self.edits.lock().await
    }

    /// The file's channels as they are now (they never change while kiln runs).
    pub fn file_specs(&self) -> Vec<ChannelSpec> {
        self.current()
            .channels()
            .iter()
            .filter(|c| c.origin == Origin::File)
            .map(|c| ChannelSpec { origin: c.origin, config: c.config().clone() })
            .collect()
    }

    /// Makes the set exactly `desired`, or changes nothing when any channel cannot be
    /// built (every problem reported).
    pub fn apply(&self, desired: Vec<ChannelSpec>) -> Result<Changes, ConfigErrors> {
        let (channels, problems) = self.plan(desired);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(self.swap(channels))
    }

    /// Makes the set `desired` without the channels that cannot be built, and reports
    /// those. Start-up uses it for stored channels: one broken channel in the database
    /// must not keep kiln from starting.
    pub fn apply_lenient(&self, desired: Vec<ChannelSpec>) -> (Changes, ConfigErrors) {
        let (channels, problems) = self.plan(desired);
        (self.swap(channels), problems)
    }

    /// Builds a channel's provider to see whether it can be built, then drops it
    /// (nothing was started). The admin API checks an edit with this before storing it.
    pub fn check(&self, config: &ChannelConfig) -> Result<(), (String, String)> {
        match self.registry.build(config) {
            None => Err(("type".to_owned(), self.unknown_type(config))),
            Some(Err(err)) => Err(("options".to_owned(), format!("{err:#}"))),
            Some(Ok(_)) => Ok(()),
        }
    }

    fn unknown_type(&self, config: &ChannelConfig) -> String {
        format!(
            "unknown provider type `{}` (known: {})",
            config.provider,
            self.registry.names().collect::<Vec<_>>().join(", ")
        )
    }

    /// The channels `desired` names, reusing each unchanged one and building the rest.
    fn plan(&self, desired: Vec<ChannelSpec>) -> (Vec<Arc<Channel>>, ConfigErrors) {
        let now = self.current();
        let mut problems = ConfigErrors::default();
        let mut names = HashSet::new();
        let mut channels = Vec::with_capacity(desired.len());
        let mut files = 0;
        for spec in desired {
            let index = files;
            if spec.origin == Origin::File {
                files += 1;
            }
            let key = spec.key(index);
            if !names.insert(spec.config.name.clone()) {
                problems.push(format!("{key}.name"), format!("`{}` is used by another channel", spec.config.name));
                continue;
            }
            if let Some(same) = now.channel(&spec.config.name).filter(|c| c.is(spec.origin, &spec.config)) {
                channels.push(Arc::clone(same));
                continue;
            }
            match self.registry.build(&spec.config) {
                None => problems.push(format!("{key}.type"), self.unknown_type(&spec.config)),
                Some(Err(err)) => problems.push(format!("{key}.options"), format!("{err:#}")),
                Some(Ok(provider)) => channels.push(Arc::new(Channel::new(
                    &spec.config,
                    spec.origin,
                    provider,
                    self.deadline,
                    &self.stop,
                ))),
            }
        }
        (channels, problems)
    }

    /// Swaps in a router over `channels`, tells the feed, and retires the channels that
    /// left — after the swap, so no reader of the new router meets a retired channel.
    fn swap(&self, channels: Vec<Arc<Channel>>) -> Changes {
        let new = Arc::new(Router::new(channels, &self.default_models));
        let old = self.current.swap(Arc::clone(&new));
        self.feed.send_replace(Arc::clone(&new));
        let mut changes = Changes::default();
        for channel in old.channels() {
            let kept = new.channels().iter().any(|c| Arc::ptr_eq(c, channel));
            if kept {
                continue;
            }
            channel.retire();
            if new.channel(&channel.name).is_some() {
                changes.replaced.push(channel.name.clone());
            } else {
                changes.removed.push(channel.name.clone());
            }
        }
        for channel in new.channels() {
            if old.channel(&channel.name).is_none() {
                changes.added.push(channel.name.clone());
            }
        }
        if !changes.is_empty() {
            tracing::info!(
                added = ?changes.added,
                replaced = ?changes.replaced,
                removed = ?changes.removed,
                "the channel set changed"
            );
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use uuid::Uuid;

    use super::*;
    use crate::providers::{Job, JobContext, Outcome, Provider, ProviderError};

    struct Idle;

    #[async_trait]
    impl Provider for Idle {
        fn describe(&self) -> String {
            "idle".into()
        }
        async fn run(&self, _job: Job, _ctx: JobContext) -> Result<Outcome, ProviderError> {
            Ok(Outcome::Detached)
        }
    }

    /// A registry whose `idle` type counts the providers it builds, and refuses an
    /// option `broken`.
    fn registry(built: Arc<AtomicUsize>) -> Registry {
        let mut registry = Registry::default();
        registry.register("idle", move |channel| {
            if channel.options.contains_key("broken") {
                anyhow::bail!("`broken` is broken");
            }
            built.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(Idle) as Arc<dyn Provider>)
        });
        registry
    }

    fn channel(name: &str, model: &str) -> ChannelConfig {
        toml::from_str(&format!(
            "name = \"{name}\"\ntype = \"idle\"\nmodels = [{{ name = \"{model}\", kind = \"image_to_3d\" }}]\n"
        ))
        .expect("channel")
    }

    fn file(config: ChannelConfig) -> ChannelSpec {
        ChannelSpec { origin: Origin::File, config }
    }

    fn set(channels: Vec<ChannelConfig>, built: &Arc<AtomicUsize>) -> (ChannelSet, CancellationToken) {
        let stop = CancellationToken::new();
        let config = Config { channels, ..Config::default() };
        let set = ChannelSet::from_config(&config, registry(Arc::clone(built)), stop.clone()).expect("built");
        (set, stop)
    }

    #[tokio::test]
    async fn an_unchanged_channel_is_kept_and_a_changed_one_replaced_and_retired() {
        let built = Arc::new(AtomicUsize::new(0));
        let (set, _stop) = set(vec![channel("a", "m"), channel("b", "m")], &built);
        assert_eq!(built.load(Ordering::SeqCst), 2);
        let before = set.current();
        let (a, b) = (Arc::clone(before.channel("a").expect("a")), Arc::clone(before.channel("b").expect("b")));
        let mut feed = set.subscribe();
        feed.borrow_and_update();

        let mut edited = channel("b", "m");
        edited.max_queue = 9;
        let changes = set.apply(vec![file(channel("a", "m")), file(edited)]).expect("applied");
        assert_eq!(changes, Changes { replaced: vec!["b".into()], ..Changes::default() });
        assert_eq!(built.load(Ordering::SeqCst), 3, "only the edited channel is built again");
        let after = set.current();
        assert!(Arc::ptr_eq(after.channel("a").expect("a"), &a), "the same channel, provider and breaker");
        assert!(!a.is_retired());
        let new_b = after.channel("b").expect("b");
        assert!(!Arc::ptr_eq(new_b, &b) && new_b.max_queue == 9);
        assert!(b.is_retired() && b.stopped().is_cancelled(), "the old one stops claiming");
        assert!(!b.background().is_cancelled(), "its provider works on until its jobs end");
        assert!(feed.has_changed().expect("feed open"), "the feed tells");
        assert!(Arc::ptr_eq(&feed.borrow_and_update(), &after));
        assert!(Arc::ptr_eq(before.channel("b").expect("b"), &b), "a router already taken does not change");

        let changes = set.apply(vec![file(channel("a", "m"))]).expect("applied");
        assert_eq!(changes.removed, ["b"]);
        assert!(new_b.is_retired() && set.current().channel("b").is_none());
    }

    #[tokio::test]
    async fn a_channel_that_cannot_be_built_changes_nothing_unless_lenient() {
        let built = Arc::new(AtomicUsize::new(0));
        let (set, _stop) = set(vec![channel("a", "m")], &built);
        let mut broken = channel("s", "m");
        broken.options.insert("broken".into(), true.into());
        let stored = ChannelSpec { origin: Origin::Database(Uuid::now_v7()), config: broken };
        let ok = ChannelSpec { origin: Origin::Database(Uuid::now_v7()), config: channel("t", "m") };
        let err = set.apply(vec![file(channel("a", "m")), stored.clone(), ok.clone()]).expect_err("refused");
        assert_eq!(err.problems()[0].0, "channels.s.options");
        assert!(err.problems()[0].1.contains("`broken` is broken"), "{err}");
        assert_eq!(set.current().channels().len(), 1, "nothing changed");

        let (changes, skipped) = set.apply_lenient(vec![file(channel("a", "m")), stored, ok]);
        assert_eq!(changes.added, ["t"]);
        assert_eq!(skipped.problems().len(), 1);
        assert_eq!(set.current().channels().len(), 2);

        let err = set.apply(vec![file(channel("a", "m")), file(channel("a", "n"))]).expect_err("twice");
        assert_eq!(err.problems()[0].0, "channels[1].name");
        let mut unknown = channel("u", "m");
        unknown.provider = "nope".into();
        assert_eq!(set.check(&unknown).expect_err("unknown").0, "type");
    }

    #[tokio::test]
    async fn the_dispatch_stop_token_stops_every_channel() {
        let built = Arc::new(AtomicUsize::new(0));
        let (set, stop) = set(vec![channel("a", "m")], &built);
        let a = Arc::clone(set.current().channel("a").expect("a"));
        stop.cancel();
        assert!(a.stopped().is_cancelled(), "no channel claims any more");
        assert!(!a.background().is_cancelled(), "the provider serves the jobs draining until they end");
    }

    #[tokio::test]
    async fn the_same_config_from_another_origin_is_another_channel() {
        let built = Arc::new(AtomicUsize::new(0));
        let (set, _stop) = set(vec![channel("a", "m")], &built);
        let a = Arc::clone(set.current().channel("a").expect("a"));
        let stored = ChannelSpec { origin: Origin::Database(Uuid::now_v7()), config: channel("a", "m") };
        let changes = set.apply(vec![stored]).expect("applied");
        assert_eq!(changes.replaced, ["a"]);
        assert!(a.is_retired());
        assert_eq!(set.current().channels()[0].origin.source(), "database");
    }
}
