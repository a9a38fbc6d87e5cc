//! Channels administered at runtime, for an admin: the gateway's door to
//! [`ChannelAdmin`]. It checks the caller, audits every change (who, what, from where;
//! never the secret), and turns the service's refusals into the API's codes.

use std::net::IpAddr;

use serde_json::json;

use super::Gateway;
use crate::{
    access::Caller,
    channels::admin::{AdminError, ChannelAdmin, ChannelDraft, ChannelView, Deleted, Forms, SecretChange},
    db::ChannelStats,
    error::{ApiError, ApiResult, Code},
};

/// What a connection test said: whether the provider answered as it should, and its
/// answer or why not, in a sentence for the admin.
pub struct Tested {
    pub ok: bool,
    pub message: String,
}

impl From<Result<String, String>> for Tested {
    fn from(answer: Result<String, String>) -> Self {
        match answer {
            Ok(message) => Tested { ok: true, message },
            Err(message) => Tested { ok: false, message },
        }
    }
}

impl Gateway {
    fn channel_admin(&self) -> ApiResult<ChannelAdmin<'_>> {
        Ok(ChannelAdmin::new(&self.channels, &self.db, self.sealer()?, self.notifier.as_ref(), &self.metrics))
    }

    /// Each provider type's form, and the fields every channel has.
    pub fn channel_forms(&self, caller: &Caller) -> ApiResult<Forms> {
        self.require_admin(caller)?;
        Ok(self.channel_admin()?.forms())
    }

    /// Every channel, the file's and the stored ones, each with its last hour.
    pub async fn channel_list(&self, caller: &Caller) -> ApiResult<Vec<(ChannelView, ChannelStats)>> {
        self.require_admin(caller)?;
        let admin = self.channel_admin()?;
        let views = admin.list().await.map_err(admin_error)?;
        let mut stats = admin.stats().await.map_err(admin_error)?;
        Ok(views
            .into_iter()
            .map(|view| {
                let own = match stats.iter().position(|s| s.channel == view.name) {
                    Some(i) => stats.swap_remove(i),
                    None => ChannelStats { channel: view.name.clone(), ..ChannelStats::default() },
                };
                (view, own)
            })
            .collect())
    }

    /// One channel by name, with its last hour.
    pub async fn channel(&self, caller: &Caller, name: &str) -> ApiResult<(ChannelView, ChannelStats)> {
        self.require_admin(caller)?;
        let admin = self.channel_admin()?;
        let view = admin.describe(name).await.map_err(admin_error)?;
        let stats = admin.stats_of(name).await.map_err(admin_error)?;
        Ok((view, stats))
    }

    pub async fn create_channel(&self, caller: &Caller, ip: IpAddr, draft: ChannelDraft) -> ApiResult<ChannelView> {
        self.require_admin(caller)?;
        let detail = change_detail(&draft);
        let view = self.channel_admin()?.create(draft).await.map_err(admin_error)?;
        self.audit(caller, ip, "channel.create", &view.name, detail).await;
        Ok(view)
    }

    pub async fn update_channel(
        &self,
        caller: &Caller,
        ip: IpAddr,
        name: &str,
        draft: ChannelDraft,
    ) -> ApiResult<ChannelView> {
        self.require_admin(caller)?;
        let admin = self.channel_admin()?;
        let id = admin.id_of(name).await.map_err(admin_error)?;
        if draft.config.name != name {
            return Err(invalid("name", "a channel's name cannot change: tasks are recorded under it"));
        }
        let detail = change_detail(&draft);
        let view = admin.update(id, draft).await.map_err(admin_error)?;
        self.audit(caller, ip, "channel.update", name, detail).await;
        Ok(view)
    }

    pub async fn set_channel_enabled(
        &self,
        caller: &Caller,
        ip: IpAddr,
        name: &str,
        enabled: bool,
    ) -> ApiResult<ChannelView> {
        self.require_admin(caller)?;
        let admin = self.channel_admin()?;
        let id = admin.id_of(name).await.map_err(admin_error)?;
        let view = admin.set_enabled(id, enabled).await.map_err(admin_error)?;
        let action = if enabled { "channel.enable" } else { "channel.disable" };
        self.audit(caller, ip, action, name, json!({})).await;
        Ok(view)
    }

    /// Deletes a stored channel; its waiting tasks move or fail (`channel_deleted`).
    pub async fn delete_channel(&self, caller: &Caller, ip: IpAddr, name: &str) -> ApiResult<Deleted> {
        self.require_admin(caller)?;
        let admin = self.channel_admin()?;
        let id = admin.id_of(name).await.map_err(admin_error)?;
        let deleted = admin.delete(id).await.map_err(admin_error)?;
        let detail = json!({ "moved": deleted.moved.len(), "failed": deleted.failed.len() });
        self.audit(caller, ip, "channel.delete", name, detail).await;
        Ok(deleted)
    }

    /// Tests a live channel's connection with a real, cheap call to its provider.
    pub async fn test_channel(&self, caller: &Caller, name: &str) -> ApiResult<Tested> {
        self.require_admin(caller)?;
        Ok(self.channel_admin()?.test_connection(name).await.map_err(admin_error)?.into())
    }

    /// Tests a form before it is saved; `stored` names the channel whose key a kept
    /// secret means.
    pub async fn test_channel_draft(
        &self,
        caller: &Caller,
        stored: Option<&str>,
        draft: ChannelDraft,
    ) -> ApiResult<Tested> {
        self.require_admin(caller)?;
        let admin = self.channel_admin()?;
        let id = match (stored, &draft.secret) {
            (Some(name), SecretChange::Keep) => Some(admin.id_of(name).await.map_err(admin_error)?),
            _ => None,
        };
        Ok(admin.test_draft(id, draft).await.map_err(admin_error)?.into())
    }
}

/// What the audit log keeps of a change: the shape, never the secret.
fn change_detail(draft: &ChannelDraft) -> serde_json::Value {
    let secret = match draft.secret {
        SecretChange::Keep => "kept",
        SecretChange::Set(_) => "set",
        SecretChange::Clear => "cleared",
    };
    let models: Vec<&str> = draft.config.models.iter().map(|m| m.name.as_str()).collect();
    json!({
        "type": draft.config.provider,
        "models": models,
        "enabled": draft.config.enabled,
        "secret": secret,
    })
}

fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::new(Code::InvalidChannel).details(json!({ "problems": [{ "field": field, "message": message }] }))
}

/// A refusal of the channel service as the client sees it; storage and sealing faults
/// are logged in full and answered `internal_error`.
fn admin_error(err: AdminError) -> ApiError {
    match err {
        AdminError::Invalid(problems) => {
            let problems: Vec<_> = problems
                .problems()
                .iter()
                .map(|(field, message)| json!({ "field": field, "message": message }))
                .collect();
            ApiError::new(Code::InvalidChannel).details(json!({ "problems": problems }))
        }
        AdminError::NotFound => ApiError::new(Code::ChannelNotFound),
        AdminError::ReadOnly => ApiError::new(Code::ChannelReadOnly),
        AdminError::Db(err) => ApiError::from(err),
        AdminError::Sealing => ApiError::internal(anyhow::anyhow!("a channel's secret cannot be sealed or opened")),
    }
}
