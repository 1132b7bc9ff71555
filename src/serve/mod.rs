//! Serving: [`service`] starts everything (`run(listener, shutdown)`), [`http`] is the
//! REST API and the viewer, [`jobs`] the durable job queue, its workers and webhooks.

pub mod http;
pub mod jobs;
pub mod mllp;
pub mod service;
