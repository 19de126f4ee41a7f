//! IPv4 addresses and netmasks as the management node sends them, read in one place.

use std::net::Ipv4Addr;

/// An address or netmask that is not one.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("{what} {value:?} is not an IPv4 address")]
    NotIpv4 { what: &'static str, value: String },
    #[error("netmask /{0} is longer than 32 bits")]
    PrefixTooLong(u8),
    #[error("netmask {0:?} is neither a dotted mask nor a prefix length")]
    NotANetmask(String),
    #[error("netmask {0} is not contiguous")]
    NotContiguous(String),
}

/// `value` as an IPv4 address; `what` names it in the error.
pub fn ipv4(what: &'static str, value: &str) -> Result<Ipv4Addr, AddressError> {
    value.parse().map_err(|_| AddressError::NotIpv4 {
        what,
        value: value.to_string(),
    })
}

/// A dotted netmask (`255.255.255.0`) or a prefix length (`24`) as a prefix length.
pub fn prefix_len(netmask: &str) -> Result<u8, AddressError> {
    if let Ok(n) = netmask.parse::<u8>() {
        return if n <= 32 {
            Ok(n)
        } else {
            Err(AddressError::PrefixTooLong(n))
        };
    }
    let mask: Ipv4Addr = netmask
        .parse()
        .map_err(|_| AddressError::NotANetmask(netmask.to_string()))?;
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    if bits.checked_shl(ones).unwrap_or(0) != 0 {
        return Err(AddressError::NotContiguous(netmask.to_string()));
    }
    Ok(ones as u8)
}

/// Network address and prefix length of `ip`/`netmask`.
pub fn network_of(ip: &str, netmask: &str) -> Result<(Ipv4Addr, u32), AddressError> {
    let ip = ipv4("IP", ip)?;
    let prefix = u32::from(prefix_len(netmask)?);
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    Ok((Ipv4Addr::from(u32::from(ip) & mask), prefix))
}
