//! A selector that counts the notices it is given, for the host's tests: `closed` and `ditched` (one per
//! `connection-closed` and `connection-ditched`, through `counter-add`), and `ipv6` (those about an IPv6
//! client). It answers the first eligible candidate and takes no arguments. Never ship it.

use vipd_plugin_sdk::host::counter_add;
use vipd_plugin_sdk::{
    Args, Candidate, Connection, InitError, SelectError, Selector, export_selector,
};

/// The test plugin.
pub struct Notices;

impl Notices {
    fn count(name: &str, conn: &Connection) {
        counter_add(name, 1);
        if conn.client().is_ipv6() {
            counter_add("ipv6", 1);
        }
    }
}

impl Selector for Notices {
    fn init(args: &Args) -> Result<Self, InitError> {
        args.only(&[])?;
        Ok(Notices)
    }

    fn select(&mut self, _conn: &Connection, candidates: &[Candidate]) -> Result<u32, SelectError> {
        candidates
            .iter()
            .find(|c| c.eligible())
            .map(|c| c.index)
            .ok_or(SelectError::NoServer)
    }

    fn connection_closed(&mut self, conn: &Connection, _real_id: u32) {
        Notices::count("closed", conn);
    }

    fn connection_ditched(&mut self, conn: &Connection, _real_id: u32) {
        Notices::count("ditched", conn);
    }
}

export_selector!(Notices);
