//! The work queue (src/kube/queue.rs): oldest first, fair between requesters, each CSR
//! queued once and held by one worker at a time.

use csr_warden::kube::queue::{Placement, WorkQueue};

fn at(requester: &str, created: i64) -> Placement {
    Placement {
        requester: requester.into(),
        created,
    }
}

fn drain(queue: &mut WorkQueue) -> Vec<String> {
    let mut order = Vec::new();
    while let Some(name) = queue.take() {
        queue.done(&name);
        order.push(name);
    }
    order
}

#[test]
fn one_requester_is_worked_oldest_first_whatever_the_arrival_order() {
    let mut queue = WorkQueue::new();
    queue.add("c", at("jane", 30));
    queue.add("a", at("jane", 10));
    queue.add("b", at("jane", 20));
    assert_eq!(drain(&mut queue), ["a", "b", "c"]);
}

#[test]
fn ties_in_creation_time_break_on_the_name() {
    let mut queue = WorkQueue::new();
    queue.add("csr-b", at("jane", 10));
    queue.add("csr-a", at("jane", 10));
    assert_eq!(drain(&mut queue), ["csr-a", "csr-b"]);
}

#[test]
fn requesters_take_turns_so_a_flood_does_not_starve_a_renewal() {
    let mut queue = WorkQueue::new();
    for i in 0..100 {
        queue.add(&format!("flood-{i:03}"), at("mallory", i));
    }
    // A kubelet renewal created after the whole flood.
    queue.add("renewal", at("system:node:n1", 1000));
    let order = drain(&mut queue);
    let position = order.iter().position(|n| n == "renewal");
    assert_eq!(position, Some(1), "{order:?}");
    // The flood itself is still worked oldest first.
    let flood: Vec<&String> = order.iter().filter(|n| n.starts_with("flood")).collect();
    let mut sorted = flood.clone();
    sorted.sort();
    assert_eq!(flood, sorted);
}

#[test]
fn a_csr_is_queued_once() {
    let mut queue = WorkQueue::new();
    queue.add("a", at("jane", 1));
    queue.add("a", at("jane", 1));
    assert_eq!(queue.waiting(), 1);
    assert_eq!(drain(&mut queue), ["a"]);
}

#[test]
fn a_csr_changed_while_worked_is_worked_again_after_not_during() {
    let mut queue = WorkQueue::new();
    queue.add("a", at("jane", 1));
    assert_eq!(queue.take().as_deref(), Some("a"));
    // A watch event for it while a worker holds it: no second worker may take it now.
    queue.add("a", at("jane", 1));
    assert_eq!(queue.take(), None);
    assert!(queue.holds("a"));
    queue.done("a");
    assert_eq!(queue.take().as_deref(), Some("a"));
    queue.done("a");
    assert_eq!(queue.take(), None);
    assert!(!queue.holds("a"));
}

#[test]
fn a_forgotten_csr_is_not_taken() {
    let mut queue = WorkQueue::new();
    queue.add("a", at("jane", 1));
    queue.add("b", at("bob", 2));
    queue.forget("a");
    assert_eq!(drain(&mut queue), ["b"]);
    assert_eq!((queue.waiting(), queue.working()), (0, 0));
}
