//! W3C trace context: the caller's trace id (from `traceparent`) follows a
//! call through the service, into its log span and the decisions it causes.

use std::future::Future;

tokio::task_local! {
    static TRACE_ID: Option<String>;
}

/// The trace id of a `traceparent` value (`00-{32 hex}-{16 hex}-{2 hex}`),
/// if it is well formed and not all zeros (the spec's invalid id). Versions
/// other than 00 are read by the 00 layout, as the spec asks.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |text: &str, len: usize| text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let well_formed = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    let zero = |text: &str| text.bytes().all(|b| b == b'0');
    (well_formed && !zero(trace_id) && !zero(parent_id)).then(|| trace_id.to_owned())
}

/// Runs `future` with `trace_id` as the current trace.
pub async fn with_trace_id<F: Future>(trace_id: Option<String>, future: F) -> F::Output {
    TRACE_ID.scope(trace_id, future).await
}

/// The current call's trace id, if its caller sent one.
pub fn current_trace_id() -> Option<String> {
    TRACE_ID.try_with(Clone::clone).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id_of(&format!("00-{id}-00f067aa0ba902b7-01")).as_deref(),
            Some(id)
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad}");
        }
        assert_eq!(
            trace_id_of(&format!("01-{id}-00f067aa0ba902b7-01-future")).as_deref(),
            Some(id)
        );
    }

    #[tokio::test]
    async fn the_trace_id_follows_the_call() {
        assert_eq!(current_trace_id(), None);
        let seen = with_trace_id(Some("abc".into()), async { current_trace_id() }).await;
        assert_eq!(seen.as_deref(), Some("abc"));
    }
}
