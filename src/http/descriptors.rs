//! File descriptors: each open connection holds one, so the connection caps must fit within the
//! process's `RLIMIT_NOFILE`; a cap above it would make `accept` fail before a full listener
//! could make room.

/// Descriptors kept for what is not a listener's connection: the listeners themselves, the
/// runtime's epoll and eventfds, stdio, the database pool's sockets come on top (see
/// [`fit_cap`]), files opened at start.
pub const DESCRIPTOR_MARGIN: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (the most an unprivileged process may) and
/// returns the soft limit now in force. When the limit cannot be read or raised, says so in the
/// log and returns what can be read (`u64::MAX` when nothing can: caps are then left as set).
pub fn raise_descriptor_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            let soft = rlimit::Resource::NOFILE.get_soft().unwrap_or(u64::MAX);
            tracing::warn!(error = %e, soft_limit = soft, "could not raise the open-files limit");
            soft
        }
    }
}

/// The largest connection cap, at most `wanted`, that fits in `limit` descriptors when
/// `reserved` of them are needed elsewhere (other listeners' caps, the database pool) beside
/// [`DESCRIPTOR_MARGIN`]; at least 1.
pub fn fit_cap(wanted: usize, limit: u64, reserved: u64) -> usize {
    let available = limit.saturating_sub(reserved.saturating_add(DESCRIPTOR_MARGIN));
    usize::try_from(available).unwrap_or(usize::MAX).clamp(1, wanted.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_is_lowered_to_what_the_limit_leaves_and_never_raised() {
        assert_eq!(fit_cap(10_000, 1_048_576, 100), 10_000);
        assert_eq!(fit_cap(10_000, 1_024, 64 + 16), 1_024 - 80 - DESCRIPTOR_MARGIN as usize);
        assert_eq!(fit_cap(10_000, 100, 64), 1, "always at least one");
        assert_eq!(fit_cap(10_000, u64::MAX, u64::MAX), 1);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_descriptor_limit();
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!(limit, soft);
        assert_eq!(soft, hard);
    }
}
