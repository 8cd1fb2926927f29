//! Ethernet addresses: [`MacAddr`], the one type and the one parser for them everywhere (config, command
//! line, interfaces, frames).

use std::fmt;
use std::str::FromStr;

/// An Ethernet (EUI-48) address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xFF; 6]);
    /// `00:00:00:00:00:00`: "unknown" in an ARP request's target hardware address.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Reads the first 6 bytes of `b`; `None` when it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<MacAddr> {
        Some(MacAddr(b.get(..6)?.try_into().ok()?))
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> MacAddr {
        MacAddr(octets)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Why a string is no MAC address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseMacError(String);

impl fmt::Display for ParseMacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a MAC address like 02:00:00:00:00:01 (six two-digit hex bytes separated by ':' or '-')",
            self.0
        )
    }
}

impl std::error::Error for ParseMacError {}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    /// Six two-digit hexadecimal bytes separated by `:` or `-` (`02:00:00:00:00:01`), either case.
    fn from_str(s: &str) -> Result<MacAddr, ParseMacError> {
        let err = || ParseMacError(s.to_owned());
        let mut mac = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut mac {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Display and FromStr round-trip; malformed strings are refused.
    #[test]
    fn parse_and_display() {
        let mac: MacAddr = "02:00:0A:ff:00:01".parse().unwrap();
        assert_eq!(mac, MacAddr([2, 0, 0x0a, 0xff, 0, 1]));
        assert_eq!(mac.to_string(), "02:00:0a:ff:00:01");
        assert_eq!(mac.to_string().parse::<MacAddr>(), Ok(mac));
        assert_eq!("02-00-0a-ff-00-01".parse::<MacAddr>(), Ok(mac));
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "02:00:00:00:00:1g",
            "02:00:00:00:00:001",
            "2:00:00:00:00:01",
            "02:00:00::00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
    }
}
