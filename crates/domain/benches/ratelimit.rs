//! Micro-benchmark of the rate limiter's check, against a baseline measured
//! in the same run: the least any keyed limiter must do (lock a map, find
//! the key, update an integer). Run with `cargo bench -p apitoken-domain`;
//! figures are recorded in `benches/RESULTS.md`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    hint::black_box,
    sync::{Arc, Mutex},
    time::Instant,
};

use apitoken_domain::{
    clock::{SharedClock, SystemClock},
    ratelimit::{Check, LocalLimiter, RateLimit, Scope},
};

const KEYS: usize = 1_000;
const ITERATIONS: usize = 2_000_000;
const ROUNDS: usize = 7;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn measure(mut op: impl FnMut(usize)) -> f64 {
    let samples = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for i in 0..ITERATIONS {
                op(i);
            }
            start.elapsed().as_nanos() as f64 / ITERATIONS as f64
        })
        .collect();
    median(samples)
}

fn main() {
    let uids: Vec<String> = (0..KEYS).map(|i| format!("0000-token-{i:04}")).collect();

    // Baseline: a locked map lookup and an integer update per call.
    let baseline_map: Mutex<HashMap<String, i64>> =
        Mutex::new(uids.iter().map(|uid| (uid.clone(), 0)).collect());
    let baseline = measure(|i| {
        let mut map = baseline_map.lock().unwrap();
        *map.get_mut(black_box(uids[i % KEYS].as_str())).unwrap() += 1;
    });

    // The clock read every check makes.
    let clock: SharedClock = Arc::new(SystemClock);
    let clock_read = measure(|_| {
        black_box(clock.now());
    });

    // The check: token limit and namespace aggregate, 1,000 warm tokens
    // (limits high enough that every call is allowed and updates state).
    let limiter = LocalLimiter::new(Arc::clone(&clock));
    let checks = |uid, token, namespace, aggregate| {
        [
            Check {
                scope: Scope::Token,
                key: uid,
                limit: RateLimit::per_minute(token),
            },
            Check {
                scope: Scope::Namespace,
                key: namespace,
                limit: RateLimit::per_minute(aggregate),
            },
        ]
    };
    let check = measure(|i| {
        black_box(limiter.check(&checks(
            black_box(&uids[i % KEYS]),
            1_000_000_000,
            "team-a",
            1_000_000_000,
        )));
    });

    // Refused checks (a token over its limit): the path a flood takes.
    let refused = measure(|_| {
        black_box(limiter.check(&checks(black_box("flooder"), 1, "team-b", 1_000_000_000)));
    });

    println!("rate limiter check, {ITERATIONS} calls x {ROUNDS} rounds (median), {KEYS} keys");
    println!("baseline (locked map update)  {baseline:7.1} ns/op  1.00x");
    println!(
        "clock read (SystemClock::now) {clock_read:7.1} ns/op  {:.2}x",
        clock_read / baseline
    );
    println!(
        "check, allowed                {check:7.1} ns/op  {:.2}x",
        check / baseline
    );
    println!(
        "check, refused                {refused:7.1} ns/op  {:.2}x",
        refused / baseline
    );
}
