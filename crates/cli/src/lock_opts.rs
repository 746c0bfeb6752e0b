//! The lease options of `run` and `elect`: the configuration's `[defaults]` first, then the
//! flags on top.
//!
//! One rule for both commands and both sources: a zero wait (`--wait 0`, `--no-wait`, or
//! `wait = "0s"` in the file) means "do not wait: try once"; `auto_renew = false` in the
//! file is honoured — the lease is not renewed, so the command is stopped when the TTL runs
//! out (exit 76, or --lost-exit-code): a hard time limit.

use std::time::Duration;

use fencelock::LockOptions;

/// The shortest TTL `run` and `elect` take (the library's own minimum is 1 ms). The guard
/// must renew the lease every third of the TTL and stop CMD before it runs out; below
/// 100 ms one scheduling hiccup of a loaded machine loses the lease, and a TTL shorter than
/// the grant round trip made grants that were lost at once, each burning a token — so such
/// a TTL is refused as bad input before anything is granted.
pub const MIN_COMMAND_TTL: Duration = Duration::from_millis(100);

/// Checks a `run`/`elect` TTL against [`MIN_COMMAND_TTL`] (the maximum is the library's).
pub fn check_command_ttl(ttl: Duration) -> Result<(), String> {
    if ttl < MIN_COMMAND_TTL {
        return Err(format!(
            "{} is below the minimum of {} for a lease that guards a command",
            fencelock::options::duration_text::human(ttl),
            fencelock::options::duration_text::human(MIN_COMMAND_TTL)
        ));
    }
    Ok(())
}

/// What `run`/`elect` acquire with.
#[derive(Debug, Clone, Copy)]
pub struct Chosen {
    /// TTL, wait bound and renewal.
    pub opts: LockOptions,
    /// Try once instead of waiting.
    pub try_once: bool,
}

/// Puts the flags (`ttl`, `wait`, `no_wait`) over the configuration's `defaults`.
pub fn choose(defaults: LockOptions, ttl: Option<Duration>, wait: Option<Duration>, no_wait: bool) -> Chosen {
    let mut opts = defaults;
    if let Some(ttl) = ttl {
        opts = opts.with_ttl(ttl);
    }
    if let Some(wait) = wait {
        opts = opts.with_wait(wait);
    }
    let try_once = no_wait || opts.wait().is_zero();
    Chosen { opts, try_once }
}

/// Checks the `[defaults]` of a configuration file, so that a bad value there is a
/// configuration error (78) like any other in the file, not a usage error (64): the TTL's
/// bounds, and a wait of at most [`fencelock::options::MAX_WAIT`] (zero is allowed: do not
/// wait).
pub fn check_file_defaults(defaults: &LockOptions) -> Result<(), String> {
    // The command's minimum first: below 1 ms too it is the bound that applies.
    check_command_ttl(defaults.ttl()).map_err(|e| format!("defaults.ttl: {e}"))?;
    fencelock::options::validate_ttl(defaults.ttl())
        .map_err(|e| format!("defaults.ttl: {}", fencelock::error::one_line(&e)))?;
    let max = fencelock::options::MAX_WAIT;
    if defaults.wait() > max {
        return Err(format!(
            "defaults.wait: {} is above the maximum of {}",
            fencelock::options::duration_text::human(defaults.wait()),
            fencelock::options::duration_text::human(max)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_wait_from_either_source_means_try_once() {
        let file_zero = LockOptions::new().with_wait(Duration::ZERO);
        assert!(choose(file_zero, None, None, false).try_once);
        assert!(!choose(file_zero, None, Some(Duration::from_secs(1)), false).try_once);
        assert!(choose(LockOptions::new(), None, Some(Duration::ZERO), false).try_once);
        assert!(choose(LockOptions::new(), None, None, true).try_once);
        assert!(!choose(LockOptions::new(), None, None, false).try_once);
    }

    #[test]
    fn auto_renew_off_in_the_file_is_kept() {
        let off = LockOptions::new().with_auto_renew(false);
        assert!(!choose(off, Some(Duration::from_secs(2)), None, false).opts.auto_renew());
    }
}
