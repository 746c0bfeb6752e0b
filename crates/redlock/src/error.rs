//! Redlock's own error: no quorum answered in time.

use std::time::Duration;

use fencelock_core::LockError;

use crate::quorum::Answer;

/// The "no quorum" error: how many answered, within what, and who did not.
pub(crate) fn no_quorum<T>(doing: &str, answers: &[Answer<T>], quorum: usize, per_node: Duration) -> LockError {
    let answered = answers.iter().filter(|a| a.is_ok()).count();
    let silent: Vec<&str> = answers
        .iter()
        .filter_map(|a| a.as_ref().err().map(String::as_str))
        .collect();
    LockError::Unavailable {
        message: format!(
            "no quorum for {doing}: {answered} of {} nodes answered (waiting at most {per_node:?}; need {quorum}); {}",
            answers.len(),
            silent.join("; ")
        ),
        source: None,
    }
}
