//! Invariants of the projection that only a bug can break — a counter going below zero, say.
//! A breach panics in debug builds and tests (loudly, where it happened); in a release build it
//! is logged and the value left at its floor, so the daemon keeps serving. `db verify` replays
//! with breaches recorded rather than panicking, and reports the first as a problem of the
//! entry that caused it.

use std::cell::RefCell;

thread_local! {
    /// `Some` while `db verify` replays on this thread: breaches are collected here.
    static RECORDED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Reports a broken invariant: `what` says which, and with which values.
pub fn breach(what: String) {
    let recorded = RECORDED.with(|r| match r.borrow_mut().as_mut() {
        Some(list) => {
            list.push(what.clone());
            true
        }
        None => false,
    });
    if recorded {
        return;
    }
    tracing::error!(invariant = %what, "a projection invariant is broken: this is a bug; run `stella orch db verify`");
    debug_assert!(false, "invariant broken: {what}");
}

/// Takes one from a counter that must be above zero; `what` names it for the report.
pub fn take_one<T>(counter: &mut T, what: impl FnOnce() -> String)
where
    T: Copy + PartialEq + From<u8> + std::ops::Sub<Output = T>,
{
    if *counter == T::from(0) {
        breach(format!("{} would go below zero", what()));
    } else {
        *counter = *counter - T::from(1);
    }
}

/// Runs `f` with breaches recorded on this thread instead of raised; returns them with `f`'s
/// value.
pub fn recording<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    RECORDED.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let value = f();
    let breaches = RECORDED.with(|r| r.borrow_mut().take()).unwrap_or_default();
    (value, breaches)
}

/// The breaches recorded so far by the enclosing [`recording`], emptied.
pub fn drain() -> Vec<String> {
    RECORDED.with(|r| r.borrow_mut().as_mut().map(std::mem::take).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_taken_below_zero_is_recorded_while_recording() {
        let ((), breaches) = recording(|| {
            let mut c = 1u32;
            take_one(&mut c, || "a".into());
            take_one(&mut c, || "queue build ready".into());
            assert_eq!(c, 0);
        });
        assert_eq!(breaches, vec!["queue build ready would go below zero".to_owned()]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "invariant broken")]
    fn a_breach_outside_recording_panics_in_debug() {
        let mut c = 0u64;
        take_one(&mut c, || "x".into());
    }
}
