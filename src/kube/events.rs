//! Events within what the API server accepts (events.k8s.io/v1 validation).

/// What the API server accepts in an Event (events.k8s.io/v1 validation): note at most 1024
/// bytes, reason and action at most 128.
pub const EVENT_NOTE_LIMIT: usize = 1024;
pub const EVENT_REASON_LIMIT: usize = 128;
const CUT_MARKER: &str = " [... cut; the whole text is in csr-warden's log]";

/// `text` cut to at most `limit` bytes on a character boundary, with a marker when cut.
pub fn fit(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let marker = if limit > CUT_MARKER.len() * 2 {
        CUT_MARKER
    } else {
        "..."
    };
    let mut end = limit.saturating_sub(marker.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &text[..end])
}

/// A token bucket for Normal Events, as client-go's event spam filter keeps one: up to
/// [`EVENT_BURST`] at once, refilled at [`EVENT_RATE`] a second. A trickle of CSRs gets every
/// Event; a storm gets its first hundred and then ten a second.
pub struct EventBudget {
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

pub const EVENT_BURST: f64 = 100.0;
pub const EVENT_RATE: f64 = 10.0;

impl Default for EventBudget {
    fn default() -> Self {
        EventBudget {
            state: std::sync::Mutex::new((EVENT_BURST, std::time::Instant::now())),
        }
    }
}

impl EventBudget {
    /// One Event's worth, if there is one.
    pub fn take(&self, now: std::time::Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *state;
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * EVENT_RATE)
            .min(EVENT_BURST);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            true
        } else {
            *state = (tokens, now);
            false
        }
    }
}
