//! Property test of the sliding window: for arbitrary arrival sequences,
//! limits and windows, no window of the limit's length ever holds more than
//! `n` accepted requests (tolerance 0), and a request is refused only when
//! `n` accepted ones lie within the look-back (the window plus one bucket).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use apitoken_domain::ratelimit::{
    Limit, Window,
    window::{Counter, bucket_width},
};
use proptest::prelude::*;

fn window() -> impl Strategy<Value = Window> {
    prop_oneof![
        Just(Window::Second),
        Just(Window::Minute),
        Just(Window::Hour)
    ]
}

/// Gaps between arrivals, as fractions of the window: bursts (0), dense
/// streams and pauses longer than a window.
fn gaps() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(
        prop_oneof![
            3 => Just(0u32),
            5 => 0u32..2_000,
            1 => 0u32..200_000,
        ],
        1..600,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn no_window_ever_holds_more_than_the_limit(
        count in 1u32..40,
        window in window(),
        start in 0i64..4_000_000_000_000_000,
        gaps in gaps(),
    ) {
        let limit = Limit { count, window };
        let length = window.micros();
        let mut counter = Counter::default();
        let mut now = start;
        let mut accepted: Vec<i64> = Vec::new();
        for gap in gaps {
            // A gap of `gap` / 100,000 windows.
            now += length * i64::from(gap) / 100_000;
            let admission = counter.admit(now, limit);
            // The converse: refused only if the look-back holds n accepted.
            let look_back = length + bucket_width(length);
            let recent = accepted.iter().filter(|t| **t > now - look_back).count();
            if admission.allowed {
                accepted.push(now);
            } else {
                prop_assert!(recent >= count as usize, "refused with {recent} in the look-back");
                let wait = admission.retry_in.expect("a wait");
                prop_assert!(wait > 0 && wait <= look_back, "wait {wait}");
            }
            // Every accepted request would also be accepted by a plain
            // sliding log of length W (the look-back only ever refuses more).
            let in_window = accepted.iter().filter(|t| **t > now - length).count();
            prop_assert!(in_window <= count as usize);
        }
        // The any-window property: a window starting at each accepted time
        // (the busiest windows start at one) holds at most `count`.
        for (i, first) in accepted.iter().enumerate() {
            let inside = accepted[i..].iter().take_while(|t| **t < first + length).count();
            prop_assert!(inside <= count as usize, "{inside} in the window from {first}");
        }
    }
}
