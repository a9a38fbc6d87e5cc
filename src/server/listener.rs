//! The listening socket and the process's open-file limit, which together decide how
//! many connections the server can hold.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// File descriptors kept free for everything that is not a client connection: the
/// database, stored files being read or written, uploads spooled to disk, log files,
/// outgoing requests to workers. A quarter of the limit, and at least this many.
const RESERVED_FILES: u64 = 256;

/// Binds `addr` with a listen backlog of `backlog` (tokio's `TcpListener::bind` always
/// asks for 1024, and axum's examples for less; a burst of connections beyond the
/// backlog waits for SYN retries, a second or more).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // A restarted server can bind while connections of the last one linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Raises the soft limit on open files to the hard limit (the default soft limit is
/// often 1024, which a thousand idle clients exhaust). Returns the limit now in force,
/// or `None` when it cannot be read.
pub fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).ok().map(|(soft, _)| soft)
        }
    }
}

/// The connection cap: the configured one, lowered so that connections can never use
/// up the file descriptors the rest of the process needs.
pub fn connection_cap(configured: u32, open_files: Option<u64>) -> usize {
    let configured = u64::from(configured);
    let cap = match open_files {
        Some(limit) => {
            let reserve = (limit / 4).max(RESERVED_FILES);
            configured.min(limit.saturating_sub(reserve).max(1))
        }
        None => configured,
    };
    usize::try_from(cap).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_rest_of_the_process() {
        assert_eq!(connection_cap(10_000, Some(1_048_576)), 10_000);
        assert_eq!(connection_cap(10_000, Some(20_000)), 10_000);
        assert_eq!(connection_cap(10_000, Some(1024)), 768);
        assert_eq!(connection_cap(10_000, Some(512)), 256);
        assert_eq!(connection_cap(10_000, Some(100)), 1);
        assert_eq!(connection_cap(500, None), 500);
    }

    #[tokio::test]
    async fn binds_with_the_asked_backlog_on_port_zero() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 2048).expect("bind");
        assert_ne!(listener.local_addr().expect("addr").port(), 0);
    }
}
