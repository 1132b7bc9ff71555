//! Webhook delivery: a JSON event per finished job, POSTed to its callback URL and signed
//! with HMAC-SHA256 over the exact body bytes, in the header
//! `X-Slidegrade-Signature: sha256=<hex>`. Receivers recompute it with the shared secret.
//! Failed deliveries are retried with exponential backoff; every attempt is stored.
//!
//! Attempts are made by [`super::outbox::deliver_loop`]: leased, so one replica sends
//! each, and retried with backoff.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;

pub use super::outbox::{WebhookSettings, backoff};
use super::store::{Delivery, Job, Outbox, Store};

pub const SIGNATURE_HEADER: &str = "x-slidegrade-signature";
pub const EVENT_HEADER: &str = "x-slidegrade-event";

/// The event body for a finished job. Holds no slide contents or patient identifiers
/// beyond what the client sent (accession and specimen id are the LIS's own keys).
pub fn payload(job: &Job) -> String {
    serde_json::json!({
        "event": "job.finished",
        "job_id": job.id,
        "state": job.state,
        "accession_number": job.request.accession_number,
        "specimen_id": job.request.specimen_id,
        "error": job.error,
        "error_type": job.error_type,
        "finished_at": job.finished_at,
        "links": {
            "job": format!("/v1/jobs/{}", job.id),
            "result": format!("/v1/jobs/{}/result", job.id),
            "fhir": format!("/v1/jobs/{}/fhir", job.id),
            "hl7": format!("/v1/jobs/{}/hl7", job.id),
        },
    })
    .to_string()
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body).
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends one webhook: POST of the stored event body, signed. The outcome is the HTTP
/// status, and an error unless it is a 2xx.
pub async fn send(
    client: &reqwest::Client,
    secret: Option<&str>,
    delivery: &Delivery,
) -> super::outbox::Attempt {
    let mut request = client
        .post(&delivery.url)
        .header("content-type", "application/json")
        .header(EVENT_HEADER, "job.finished");
    if let Some(secret) = secret {
        request = request.header(SIGNATURE_HEADER, sign(secret, delivery.payload.as_bytes()));
    }
    match request.body(delivery.payload.clone()).send().await {
        Ok(r) if r.status().is_success() => super::outbox::Attempt {
            status: Some(r.status().as_u16()),
            error: None,
        },
        Ok(r) => super::outbox::Attempt {
            status: Some(r.status().as_u16()),
            error: Some(format!("HTTP {}", r.status())),
        },
        Err(e) => super::outbox::Attempt {
            status: None,
            error: Some(e.to_string()),
        },
    }
}

/// Delivers due webhooks, as replica `owner`, until `shutdown` turns true.
pub async fn deliver_loop(
    store: Arc<Store>,
    owner: String,
    settings: WebhookSettings,
    shutdown: watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder().timeout(settings.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%e, "cannot build the webhook HTTP client; webhooks are disabled");
            return;
        }
    };
    let secret = settings.secret.clone();
    super::outbox::deliver_loop(
        store,
        owner,
        Outbox::Webhook,
        settings,
        shutdown,
        |delivery| {
            let (client, secret) = (client.clone(), secret.clone());
            async move { send(&client, secret.as_deref(), &delivery).await }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn signature_matches_rfc4231_test_case_2() {
        // RFC 4231 §4.3: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_secs(5);
        assert_eq!(backoff(base, 1), Duration::from_secs(5));
        assert_eq!(backoff(base, 3), Duration::from_secs(20));
        assert_eq!(backoff(base, 40), Duration::from_secs(3600));
    }
}
