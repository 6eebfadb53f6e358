//! Talking to the API server, for every controller: the client and its connection bound
//! ([`client`]), the deadline and in-flight limit on each request ([`request`]), leader election
//! ([`leader`]), and the per-object work queue with its backoff ([`queue`]).

pub mod client;
pub mod discovery;
pub mod events;
pub mod leader;
pub mod queue;
pub mod request;
pub mod watch;
pub mod work;
