-- Finished webhook deliveries are pruned after `webhooks.keep`: find them by their end.
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE status != 'pending';
