//! The load generator: `concurrency` tasks over `connections` HTTP/2
//! connections, each calling as fast as answers come back for a fixed
//! time, recording every latency. Each call's outcome is checked (a
//! benchmark of errors measures nothing).

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::transport::Channel;

/// What one scenario measured.
#[derive(Debug, Clone)]
pub(crate) struct Measurement {
    /// Scenario name.
    pub(crate) name: String,
    /// Calls completed with the expected outcome.
    pub(crate) ok: u64,
    /// Calls with another outcome.
    pub(crate) unexpected: u64,
    /// The first unexpected outcome, for the report.
    pub(crate) first_unexpected: Option<String>,
    /// Wall time measured.
    pub(crate) elapsed: Duration,
    /// Latencies of the expected calls, in microseconds, sorted.
    pub(crate) latencies: Vec<u32>,
}

impl Measurement {
    /// Expected calls a second.
    pub(crate) fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile latency (0..=1).
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        Duration::from_micros(u64::from(self.latencies[index]))
    }
}

/// How hard to drive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// Calls in flight at once.
    pub(crate) concurrency: usize,
    /// How long to measure (after a short warm-up).
    pub(crate) duration: Duration,
    /// Warm-up before measuring.
    pub(crate) warmup: Duration,
}

/// Runs `call(channel, task, iteration)` from `load.concurrency` tasks over
/// `channels`; a call returns `Ok(())` for the expected outcome, `Err(what)`
/// otherwise.
pub(crate) async fn run<F, Fut>(
    name: &str,
    channels: &[Channel],
    load: Load,
    call: F,
) -> Measurement
where
    F: Fn(Channel, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now() + load.warmup;
    let end = start + load.duration;
    let mut tasks = Vec::with_capacity(load.concurrency);
    for task in 0..load.concurrency {
        let channel = channels[task % channels.len()].clone();
        let call = Arc::clone(&call);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let (mut ok, mut unexpected, mut first) = (0u64, 0u64, None);
            let mut iteration = 0u64;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let result = call(channel.clone(), task, iteration).await;
                iteration += 1;
                if began < start {
                    continue;
                }
                match result {
                    Ok(()) => {
                        ok += 1;
                        let micros = began.elapsed().as_micros();
                        latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    }
                    Err(what) => {
                        unexpected += 1;
                        first.get_or_insert(what);
                    }
                }
            }
            (latencies, ok, unexpected, first)
        }));
    }
    let mut measurement = Measurement {
        name: name.to_owned(),
        ok: 0,
        unexpected: 0,
        first_unexpected: None,
        elapsed: load.duration,
        latencies: Vec::new(),
    };
    for task in tasks {
        if let Ok((latencies, ok, unexpected, first)) = task.await {
            measurement.latencies.extend(latencies);
            measurement.ok += ok;
            measurement.unexpected += unexpected;
            if measurement.first_unexpected.is_none() {
                measurement.first_unexpected = first;
            }
        }
    }
    measurement.latencies.sort_unstable();
    measurement
}

/// Latency at a low rate: `clients` tasks, each making `per_second` calls a
/// second for `duration` (so the server is mostly idle between calls).
pub(crate) async fn paced<F, Fut>(
    name: &str,
    channels: &[Channel],
    clients: usize,
    per_second: u32,
    duration: Duration,
    call: F,
) -> Measurement
where
    F: Fn(Channel, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let call = Arc::new(call);
    let interval = Duration::from_secs(1) / per_second.max(1);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let channel = channels[client % channels.len()].clone();
        let call = Arc::clone(&call);
        tasks.push(tokio::spawn(async move {
            // Spread the clients over the interval.
            tokio::time::sleep(
                interval * u32::try_from(client).unwrap_or(0) / clients.max(1) as u32,
            )
            .await;
            let mut ticker = tokio::time::interval(interval);
            let end = Instant::now() + duration;
            let (mut latencies, mut ok, mut unexpected, mut first) = (Vec::new(), 0u64, 0u64, None);
            let mut iteration = 0;
            while Instant::now() < end {
                ticker.tick().await;
                let began = Instant::now();
                match call(channel.clone(), client, iteration).await {
                    Ok(()) => {
                        ok += 1;
                        latencies
                            .push(u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                    Err(what) => {
                        unexpected += 1;
                        first.get_or_insert(what);
                    }
                }
                iteration += 1;
            }
            (latencies, ok, unexpected, first)
        }));
    }
    let mut measurement = Measurement {
        name: name.to_owned(),
        ok: 0,
        unexpected: 0,
        first_unexpected: None,
        elapsed: duration,
        latencies: Vec::new(),
    };
    for task in tasks {
        if let Ok((latencies, ok, unexpected, first)) = task.await {
            measurement.latencies.extend(latencies);
            measurement.ok += ok;
            measurement.unexpected += unexpected;
            if measurement.first_unexpected.is_none() {
                measurement.first_unexpected = first;
            }
        }
    }
    measurement.latencies.sort_unstable();
    measurement
}

/// Opens `count` connections to `address` (plaintext, loopback).
pub(crate) async fn connect(address: &str, count: usize) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let channel = Channel::from_shared(format!("http://{address}"))
            .map_err(|error| error.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|error| format!("cannot connect to {address}: {error}"))?;
        channels.push(channel);
    }
    Ok(channels)
}
