//! [`TaskSlot`]: whether the one background task of a kind runs, kept inside the state it
//! serves (under that state's mutex), so that a task which ends without saying so does
//! not leave the slot taken for the life of the instance.
//!
//! A task says it ends when it finds no work left, in the same critical section in which
//! a newcomer checks whether to start one. But a task can also end silently: its future
//! is dropped with the runtime it ran on (a synchronous wrapper that builds a runtime per
//! call, a test's runtime, a shut-down service). Before, the slot then stayed taken and
//! nothing started the task again: statement timeouts stopped firing, waiter tickets
//! stopped being kept. Each task now holds a [`scopeguard`] that ends its slot as its
//! future drops; the slot counts tasks, so the guard of a task that already ended — and
//! whose slot a newer task took — leaves the newer one alone (two tasks of a kind would
//! each do the work, twice the statements).
//!
//! Not covered: a runtime that is alive but no longer driven (a current-thread runtime
//! outside `block_on`) keeps its task, and the work waits until it is driven again — as
//! every task spawned on it does.

/// The slot of one background task of a kind.
#[derive(Debug, Default)]
pub(crate) struct TaskSlot {
    running: Option<u64>,
    started: u64,
}

impl TaskSlot {
    /// Takes the slot when no task holds it: the new task's number, to give to
    /// [`end`](Self::end) when it ends.
    pub(crate) fn start(&mut self) -> Option<u64> {
        if self.running.is_some() {
            return None;
        }
        self.started += 1;
        self.running = Some(self.started);
        Some(self.started)
    }

    /// Task `task` ended (or never started): the slot is free again, unless a newer task
    /// holds it.
    pub(crate) fn end(&mut self, task: u64) {
        if self.running == Some(task) {
            self.running = None;
        }
    }

    /// Whether a task holds the slot.
    #[cfg(test)]
    pub(crate) fn is_taken(&self) -> bool {
        self.running.is_some()
    }
}

/// What a task of a slot holds, to be moved into its future when it is spawned: dropped
/// with the future — at its end, when its runtime drops it, also before its first poll —
/// it calls `end(owner, task)` if `owner` still lives. Made before the spawn, not in the
/// task's body (a future dropped unpolled never runs its body), and spawned after the
/// lock of the slot's state is let go (a runtime shutting down drops the task at once,
/// and `end` takes that lock).
pub(crate) fn ends_with_its_task<T: Send + Sync + 'static>(
    owner: &std::sync::Arc<T>,
    task: u64,
    end: fn(&T, u64),
) -> impl Send + 'static {
    scopeguard::guard(std::sync::Arc::downgrade(owner), move |owner| {
        if let Some(owner) = owner.upgrade() {
            end(&owner, task);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_end_of_an_older_task_leaves_the_newer_one_its_slot() {
        let mut slot = TaskSlot::default();
        let first = slot.start().unwrap_or_default();
        assert_eq!(slot.start(), None, "one task at a time");
        slot.end(first);
        let second = slot.start().unwrap_or_default();
        slot.end(first); // the first task's guard, dropped after it said it ended
        assert!(slot.is_taken(), "the second task keeps its slot");
        slot.end(second);
        assert!(!slot.is_taken());
    }
}
