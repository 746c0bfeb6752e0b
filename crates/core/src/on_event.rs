//! A tracing subscriber for this crate's tests that hands every event to a closure: what
//! a test records, counts or panics on (it was written out three times: a warning
//! recorder and a counter in the file backend, a panicking layer in the lease's tests).
//! Spans are accepted and ignored.

use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Calls its closure on every event.
pub(crate) struct OnEvent<F>(pub(crate) F);

impl<F: Fn(&Event<'_>) + Send + Sync + 'static> Subscriber for OnEvent<F> {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        (self.0)(event)
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// An event's fields as one line, `name=value ` each (values as `Debug` prints them).
pub(crate) fn fields(event: &Event<'_>) -> String {
    struct Fields<'a>(&'a mut String);
    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }
    let mut line = String::new();
    event.record(&mut Fields(&mut line));
    line
}
