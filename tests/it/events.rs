//! What goes into Events: cut to the API's limits, and Normal Events budgeted.

use std::time::{Duration, Instant};

use csr_warden::kube::events::{EVENT_BURST, EVENT_RATE, EventBudget, fit};

#[test]
fn texts_are_cut_on_a_character_boundary_with_a_marker() {
    let rows: &[(&str, usize)] = &[
        ("short", 1024),
        (&"é".repeat(2000), 1024),
        (&"x".repeat(5000), 1024),
        (&"ü".repeat(100), 128),
    ];
    for (text, limit) in rows {
        let cut = fit(text, *limit);
        assert!(cut.len() <= *limit, "{} > {limit}", cut.len());
        if text.len() <= *limit {
            assert_eq!(&cut, text);
        } else {
            assert!(cut.ends_with("]") || cut.ends_with("..."), "{cut}");
            let kept = cut.split(" [").next().unwrap_or_default();
            assert!(text.starts_with(kept), "a prefix of the text is kept");
        }
    }
}

#[test]
fn the_event_budget_lets_a_trickle_through_and_sheds_a_storm() {
    let budget = EventBudget::default();
    let start = Instant::now();
    let burst = EVENT_BURST as usize;
    let granted = (0..burst * 3).filter(|_| budget.take(start)).count();
    assert_eq!(granted, burst, "a storm gets the burst, no more");
    // A second later, the refill.
    let later = start + Duration::from_secs(1);
    let refilled = (0..burst).filter(|_| budget.take(later)).count();
    assert_eq!(refilled, EVENT_RATE as usize);
    // After a quiet spell it is full again, never fuller.
    let quiet = later + Duration::from_secs(3600);
    let again = (0..burst * 2).filter(|_| budget.take(quiet)).count();
    assert_eq!(again, burst);
}
