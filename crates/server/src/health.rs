//! Health that tells the truth: `grpc.health.v1.Health` answers SERVING only
//! while every check passes, re-checked every interval:
//!
//! - **database**: it answers a ping;
//! - **schema**: every migration this binary expects is applied (a server
//!   started with `--no-migrate` on an empty or older database is
//!   NOT_SERVING until `apitoken-server migrate` runs);
//! - **index**: every token is loaded into memory (see [`crate::index`]);
//! - **shutdown**: from the moment shutdown begins, NOT_SERVING for good.
//!
//! Each change of a check is logged once with its detail; the overall and
//! `apitoken.v1.ApiTokenService` statuses follow the checks together.

use std::{sync::Arc, time::Duration};

use apitoken_proto::SERVICE_NAME;
use apitoken_store::TokenStore;

use crate::index::TokenIndex;
use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

/// One named check's outcome: `Ok`, or what is wrong.
pub type CheckResult = Result<(), String>;

/// An extra check (e.g. Redis) the monitor runs with its own.
pub type ExtraCheck =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = CheckResult> + Send>> + Send + Sync>;

/// The outcome of every check at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// `(check, outcome)` in a fixed order.
    pub checks: Vec<(&'static str, CheckResult)>,
}

impl HealthReport {
    /// Whether every check passed.
    pub fn healthy(&self) -> bool {
        self.checks.iter().all(|(_, result)| result.is_ok())
    }
}

/// Runs the checks.
#[derive(Clone)]
pub struct HealthChecks {
    store: TokenStore,
    index: Option<Arc<TokenIndex>>,
    extra: Vec<(&'static str, ExtraCheck)>,
}

impl std::fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecks")
            .field(
                "extra",
                &self.extra.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl HealthChecks {
    /// The database and schema checks over `store`.
    pub fn new(store: TokenStore) -> Self {
        Self {
            store,
            index: None,
            extra: Vec::new(),
        }
    }

    /// Adds the check that the in-memory index is loaded.
    pub fn with_index(mut self, index: Arc<TokenIndex>) -> Self {
        self.index = Some(index);
        self
    }

    /// Adds a named check.
    pub fn with(mut self, name: &'static str, check: ExtraCheck) -> Self {
        self.extra.push((name, check));
        self
    }

    /// Runs every check once.
    pub async fn run(&self) -> HealthReport {
        let database = self
            .store
            .ping()
            .await
            .map_err(|error| format!("database unreachable: {error}"));
        let schema = match &database {
            Err(_) => Err("unknown: the database is unreachable".to_owned()),
            Ok(()) => match self.store.pending_migrations().await {
                Ok(pending) if pending.is_empty() => Ok(()),
                Ok(pending) => Err(format!(
                    "{} migration(s) not applied (first: {}): run `apitoken-server migrate`",
                    pending.len(),
                    pending[0]
                )),
                Err(error) => Err(format!("cannot read the schema version: {error}")),
            },
        };
        let mut checks = vec![("database", database), ("schema", schema)];
        if let Some(index) = &self.index {
            let loaded = if index.is_loaded() {
                Ok(())
            } else {
                Err("the token index is not loaded yet".to_owned())
            };
            checks.push(("index", loaded));
        }
        for (name, check) in &self.extra {
            checks.push((name, check().await));
        }
        HealthReport { checks }
    }
}

/// Sets the overall and the service's status.
pub async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

/// Logs what changed between two reports, one line per changed check.
fn log_changes(previous: Option<&HealthReport>, current: &HealthReport) {
    for (index, (name, result)) in current.checks.iter().enumerate() {
        let before = previous.and_then(|report| report.checks.get(index).map(|(_, r)| r));
        if before == Some(result) {
            continue;
        }
        match result {
            Ok(()) => info!(check = name, "health check passes"),
            Err(detail) => warn!(check = name, %detail, "health check fails"),
        }
    }
}

/// Checks once now (so the first status is true, not assumed), then every
/// `interval` until `stopping`; the statuses follow the checks.
pub async fn spawn_monitor(
    checks: HealthChecks,
    reporter: HealthReporter,
    interval: Duration,
    mut stopping: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let first = checks.run().await;
    log_changes(None, &first);
    record(&first);
    set_health(&reporter, serving(first.healthy())).await;
    tokio::spawn(async move {
        let mut previous = first;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stopping.changed() => return,
            }
            let report = checks.run().await;
            if *stopping.borrow() {
                return;
            }
            log_changes(Some(&previous), &report);
            record(&report);
            if report.healthy() != previous.healthy() {
                if report.healthy() {
                    info!("every health check passes: SERVING");
                } else {
                    warn!("a health check fails: NOT_SERVING");
                }
                set_health(&reporter, serving(report.healthy())).await;
            }
            previous = report;
        }
    })
}

/// The health gauges of a report.
fn record(report: &HealthReport) {
    use crate::metrics::names;
    for (name, result) in &report.checks {
        metrics::gauge!(names::HEALTH_CHECK, "check" => *name)
            .set(f64::from(u8::from(result.is_ok())));
    }
    metrics::gauge!(names::SERVING).set(f64::from(u8::from(report.healthy())));
}

fn serving(healthy: bool) -> ServingStatus {
    if healthy {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}
