//! The results: per token count, each scenario's calls a second, p50, p99
//! and ratio to the baseline of the same run, plus the server's memory,
//! cold start and latency at a low rate; as a Markdown document.

use std::{fmt::Write as _, time::Duration};

use crate::load::Measurement;

/// One run against one pre-loaded server.
#[derive(Debug, Default)]
pub(crate) struct Run {
    /// Tokens pre-loaded.
    pub(crate) tokens: u64,
    /// The scenarios, the baseline first.
    pub(crate) measurements: Vec<Measurement>,
    /// Server resident memory after the run.
    pub(crate) rss: Option<u64>,
    /// Server resident memory once SERVING, before any call.
    pub(crate) rss_at_start: Option<u64>,
    /// The server's process, whose memory each scenario's line shows.
    pub(crate) server_pid: Option<u32>,
    /// Spawn to SERVING.
    pub(crate) cold_start: Duration,
    /// Latency at a low rate.
    pub(crate) low_load: Option<Measurement>,
}

/// Every run.
#[derive(Debug)]
pub(crate) struct Report {
    setup: String,
    runs: Vec<Run>,
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

impl Report {
    /// A report of runs made under `setup`.
    pub(crate) fn new(setup: &str) -> Self {
        Self {
            setup: setup.to_owned(),
            runs: Vec::new(),
        }
    }

    /// Adds a run.
    pub(crate) fn push(&mut self, run: Run) {
        self.runs.push(run);
    }

    /// The Markdown document.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# apitoken benchmark results\n");
        let _ = writeln!(
            out,
            "Produced by `apitoken-bench` (crates/bench): {}. {} build; the \
             baseline is `grpc.health.v1.Health/Check` on the same server in the \
             same run, so ratios compare across machines. `unexpected` counts calls \
             whose outcome was not the expected one (it must be 0). The pre-loaded \
             tokens are all in one namespace (`bench`); `CreateApiToken` writes \
             into another (`bench-writes`), whose quota check counts only its own \
             tokens.\n",
            self.setup,
            if cfg!(debug_assertions) {
                "Debug (figures not comparable)"
            } else {
                "Release"
            }
        );
        for run in &self.runs {
            let baseline = run.measurements.first().map_or(1.0, Measurement::rate);
            let _ = writeln!(out, "## {} tokens\n", run.tokens);
            let _ = writeln!(
                out,
                "| call | calls/s | ratio to baseline | p50 | p99 | unexpected |"
            );
            let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
            for measurement in &run.measurements {
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {:.2} | {} | {} | {} |",
                    measurement.name,
                    measurement.rate(),
                    measurement.rate() / baseline.max(1e-9),
                    ms(measurement.quantile(0.5)),
                    ms(measurement.quantile(0.99)),
                    measurement.unexpected
                );
            }
            let layer = run
                .measurements
                .iter()
                .find(|m| m.name.contains("interceptor"))
                .zip(
                    run.measurements
                        .iter()
                        .find(|m| m.name.contains("no layer")),
                );
            let _ = writeln!(out);
            if let Some((with, without)) = layer {
                let _ = writeln!(
                    out,
                    "- interceptor, cache hit: {:.2} × the same handler without the layer",
                    with.rate() / without.rate().max(1e-9)
                );
            }
            if let Some(low) = &run.low_load {
                let _ = writeln!(
                    out,
                    "- latency at a low rate ({}): p50 {}, p99 {}, {} calls",
                    low.name,
                    ms(low.quantile(0.5)),
                    ms(low.quantile(0.99)),
                    low.ok
                );
            }
            if let Some(start) = run.rss_at_start {
                let _ = writeln!(
                    out,
                    "- server resident memory once SERVING (every token loaded): {:.0} MB",
                    start as f64 / 1e6
                );
            }
            if let Some(rss) = run.rss {
                let _ = writeln!(
                    out,
                    "- server resident memory after the run: {:.0} MB",
                    rss as f64 / 1e6
                );
            }
            let _ = writeln!(
                out,
                "- cold start (spawn to SERVING, every token loaded): {}\n",
                ms(run.cold_start)
            );
        }
        out
    }
}
