//! Connection objects (patent FIG. 6C), found by hash in both directions.

use std::time::Duration;

/// Idle timeouts per connection state (config section `[timeouts]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A TCP connection that has seen a SYN but no SYN-ACK yet.
    pub syn: Duration,
    /// A TCP connection that has seen the server's SYN-ACK.
    pub established: Duration,
    /// After a FIN or RST from either side.
    pub closing: Duration,
    /// A UDP flow.
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            syn: Duration::from_secs(10),
            established: Duration::from_secs(15 * 60),
            closing: Duration::from_secs(30),
            udp: Duration::from_secs(60),
        }
    }
}
