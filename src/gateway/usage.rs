//! Usage and prices as callers see them: a user reads their own records, an admin
//! everyone's and sets prices.

use super::Gateway;
use crate::{
    access::Caller,
    db::{Activity, Price, UsageFilter, UsageRecord, UsageTotals},
    error::{ApiError, ApiResult, Code},
};

impl Gateway {
    /// A page of usage records, newest first, and the totals over every record the
    /// filter selects. A user's filter is narrowed to their own records.
    pub async fn usage(&self, caller: &Caller, mut filter: UsageFilter) -> ApiResult<(Vec<UsageRecord>, UsageTotals)> {
        match caller {
            Caller::Anonymous => return Err(ApiError::new(Code::Unauthorized)),
            caller if !caller.is_admin() => filter.user = caller.owner(),
            _ => {}
        }
        let (records, totals) = tokio::try_join!(self.db.list_usage(&filter), self.db.usage_totals(&filter))?;
        Ok((records, totals))
    }

    /// The dashboard's numbers over the last `hours` (admins only).
    pub async fn activity(&self, caller: &Caller, hours: u32) -> ApiResult<Activity> {
        self.require_admin(caller)?;
        let since = chrono::Utc::now() - chrono::Duration::hours(i64::from(hours.clamp(1, 24 * 31)));
        Ok(self.db.activity(since).await?)
    }

    pub async fn prices(&self) -> ApiResult<Vec<Price>> {
        Ok(self.db.list_prices().await?)
    }

    /// Sets a model's price (admins only).
    pub async fn set_price(&self, caller: &Caller, price: &Price, ip: std::net::IpAddr) -> ApiResult<()> {
        self.require_admin(caller)?;
        if price.per_task < 0 || price.per_image < 0 {
            return Err(ApiError::with_message(Code::InvalidRequest, "Prices are whole credits, 0 or more."));
        }
        if self.router().kind_of(&price.model).is_none() {
            return Err(ApiError::with_message(
                Code::UnknownModel,
                format!("No channel serves `{}`; GET /api/v1/catalog lists the models.", price.model),
            ));
        }
        self.db.set_price(price).await?;
        let detail = serde_json::json!({ "per_task": price.per_task, "per_image": price.per_image });
        self.audit(caller, ip, "price.set", &price.model, detail).await;
        Ok(())
    }
}
