//! What the guard's configuration (`FILTER_CONFIG`: public and NAT addresses with their
//! data-port ranges) says about a packet's destination address and port.

use ftp_guard_common::{
    Counter, DataRange, FilterConfig, IpAddrBe, MAX_DATA_RANGES, RANGE_ACTIVE_PORT_20,
};

/// Which side of the gateway a destination address belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A public address: the packet comes from a client.
    Client,
    /// A NAT address: the packet comes from the origin.
    Origin,
}

/// The side `addr` belongs to, if any data range is on it.
#[inline(always)]
pub fn side_of(config: &FilterConfig, addr: &IpAddrBe) -> Option<Side> {
    let mut i = 0;
    while i < MAX_DATA_RANGES {
        if i as u32 >= config.range_count {
            break;
        }
        let range = &config.ranges[i];
        if range.addr_be == *addr {
            return Some(Side::Client);
        }
        if !range.nat_addr_be.is_unspecified() && range.nat_addr_be == *addr {
            return Some(Side::Origin);
        }
        i += 1;
    }
    None
}

/// True when `port` lies in any protected range (whatever its address).
#[inline(always)]
pub fn in_any_range(config: &FilterConfig, port: u16) -> bool {
    let mut i = 0;
    while i < MAX_DATA_RANGES {
        if i as u32 >= config.range_count {
            break;
        }
        if config.ranges[i].contains(port) {
            return true;
        }
        i += 1;
    }
    false
}

/// What a destination port means on a guarded address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PortClass {
    /// In a data range: leases and flows, everything else dropped (client side).
    Data,
    /// Port 20 of a public address whose range sends active data from it: flows only.
    ActiveSource,
    /// A service's control port on its public address: the policy judges, the stack serves.
    Control,
    /// Anything else: not the guard's business.
    Other,
}

/// A verdict on a packet to a service's data range or control port, given the service's
/// index and range (a trait, not a closure: closures cannot be forced inline, and an
/// outlined call's frame does not fit beside the guard's).
pub trait Judge {
    fn judge(&self, service: u32, range: &DataRange, class: PortClass) -> Option<Counter>;
}

/// Judges nothing.
pub struct NoJudge;

impl Judge for NoJudge {
    #[inline(always)]
    fn judge(&self, _: u32, _: &DataRange, _: PortClass) -> Option<Counter> {
        None
    }
}

/// What `port` on `addr` is, and what `judge` says of a packet to it: `judge` is asked
/// with the service's index and range when the port is its data range or control port.
///
/// The index never leaves the loop: a result that carried it would give the verifier one
/// state per service for everything after (it walked eight times as many instructions).
#[inline(always)]
pub fn classify_port<J: Judge>(
    config: &FilterConfig,
    side: Side,
    addr: &IpAddrBe,
    port: u16,
    judge: &J,
) -> (PortClass, Option<Counter>) {
    let mut class = PortClass::Other;
    let mut i = 0;
    while i < MAX_DATA_RANGES {
        if i as u32 >= config.range_count {
            break;
        }
        let range = &config.ranges[i];
        let range_addr = match side {
            Side::Client => range.addr_be,
            Side::Origin => range.nat_addr_be,
        };
        if range_addr == *addr {
            if range.contains(port) {
                return (
                    PortClass::Data,
                    judge.judge(i as u32, range, PortClass::Data),
                );
            }
            if side == Side::Client && range.control_port != 0 && port == range.control_port {
                return (
                    PortClass::Control,
                    judge.judge(i as u32, range, PortClass::Control),
                );
            }
            if side == Side::Client && port == 20 && range.flags & RANGE_ACTIVE_PORT_20 != 0 {
                class = PortClass::ActiveSource;
            }
        }
        i += 1;
    }
    (class, None)
}
