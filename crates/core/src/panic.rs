//! The text of a caught panic, for the places that catch one and report it (the lease
//! timer, the CLI's lab and the bench when a server launcher panics).

use std::any::Any;

/// The message a panic was raised with (`panic!("…")` with or without arguments), from the
/// payload [`std::panic::catch_unwind`] or a `JoinError` gives; `None` when the payload is
/// not text (`std::panic::panic_any` of another type).
pub fn text(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_of_each_payload_kind() {
        let caught = |f: fn()| std::panic::catch_unwind(f).unwrap_err();
        assert_eq!(text(&*caught(|| panic!("plain"))), Some("plain"));
        assert_eq!(text(&*caught(|| panic!("with {}", 1))), Some("with 1"));
        assert_eq!(text(&*caught(|| std::panic::panic_any(7_u8))), None);
    }
}
