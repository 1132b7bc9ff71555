//! Delivery of finished jobs' messages (webhooks, HL7 results over MLLP): the store
//! holds one outbox row per job and channel, queued in the same transaction that records
//! the job's outcome; this loop sends what is due.
//!
//! Each attempt is claimed under a lease in the store first, so among replicas sharing
//! one store exactly one sends it. The lease outlasts the attempt's timeout; only a
//! replica that dies after the receiver answered and before the attempt was recorded
//! makes a delivery go out again (at-least-once, as every such sender: receivers should
//! de-duplicate on the job id). Failures are retried with exponential backoff until
//! `max_attempts`; every attempt is recorded and shown on `GET /v1/jobs/{id}`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::store::{AttemptRecord, Delivery, Outbox, Store, now};

/// How deliveries are retried (webhooks and HL7 results alike), and the webhooks'
/// signing secret.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Shared secret for the HMAC; callbacks are refused at submit time without one.
    pub secret: Option<String>,
    /// First retry delay; each retry doubles it, up to an hour.
    pub retry_base: Duration,
    /// Attempts before a delivery is marked failed.
    pub max_attempts: u32,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            secret: None,
            retry_base: Duration::from_secs(5),
            max_attempts: 8,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Delay before retry number `attempt` (1-based): base · 2^(attempt−1), capped at an hour.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(Duration::from_secs(3600))
}

/// The outcome of one attempt: the receiver's status code, if it answered with one, and
/// the error unless it accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// Sends due deliveries of `outbox` with `send`, as replica `owner`, until `shutdown`
/// turns true. `settings` gives the retry policy and the per-attempt timeout.
pub async fn deliver_loop<F, Fut>(
    store: Arc<Store>,
    owner: String,
    outbox: Outbox,
    settings: WebhookSettings,
    mut shutdown: watch::Receiver<bool>,
    send: F,
) where
    F: Fn(Delivery) -> Fut,
    Fut: Future<Output = Attempt>,
{
    // Long enough for the attempt and for recording it.
    let lease = settings.timeout + Duration::from_secs(30);
    let channel = match outbox {
        Outbox::Webhook => "webhook",
        Outbox::Hl7Results => "hl7_result",
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        loop {
            let delivery = match store.claim_delivery(outbox, &owner, lease) {
                Ok(Some(delivery)) => delivery,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(%e, channel, "cannot claim a delivery");
                    break;
                }
            };
            let job_id = delivery.job_id.clone();
            let attempt_number = delivery.attempts + 1;
            let attempt = match tokio::time::timeout(settings.timeout, send(delivery)).await {
                Ok(attempt) => attempt,
                Err(_) => Attempt {
                    status: None,
                    error: Some(format!("no answer within {} s", settings.timeout.as_secs())),
                },
            };
            let outcome = match (&attempt.error, attempt_number >= settings.max_attempts) {
                (None, _) => "delivered",
                (Some(_), true) => "failed",
                (Some(_), false) => "pending",
            };
            let next = now()
                + backoff(settings.retry_base, attempt_number)
                    .as_secs()
                    .max(1);
            let record = AttemptRecord {
                state: outcome,
                next_attempt_at: next,
                status: attempt.status,
                error: attempt.error.as_deref(),
            };
            match store.record_attempt(outbox, &job_id, &owner, &record) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(job = %job_id, channel, "delivery lease ran out before the attempt was recorded")
                }
                Err(e) => tracing::error!(%e, channel, "cannot record a delivery attempt"),
            }
            crate::telemetry::global()
                .deliveries
                .with_label_values(&[
                    channel,
                    if attempt.error.is_none() {
                        "delivered"
                    } else {
                        "error"
                    },
                ])
                .inc();
            tracing::info!(job = %job_id, channel, attempt = attempt_number, outcome, status = attempt.status.unwrap_or(0), "delivery attempt");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {},
            _ = shutdown.changed() => {},
        }
    }
}
