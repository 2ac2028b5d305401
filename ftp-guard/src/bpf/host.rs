//! The host around the programs, in the caller thread's network namespace: interface
//! look-ups (index, MTU, driver, addresses), the route towards an origin, and the sysctls
//! the kernel path sets (reserved ports, `accept_local`).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracing::{info, warn};

use super::BpfError;
use crate::config::PortRange;

/// The driver behind `interface` (ethtool's GDRVINFO, in the caller's network namespace):
/// "veth", "bridge", "mlx5_core"…; `None` when the device does not say.
pub fn driver_name(interface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    // SAFETY: a plain C struct, zero is a valid start.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: the request points to a live DrvInfo, the struct SIOCETHTOOL fills.
    unsafe {
        interface_ioctl(interface, SIOCETHTOOL, |req| {
            req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
        })?
    };
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// The MTU of `interface` (SIOCGIFMTU, in the caller thread's network namespace).
pub fn interface_mtu(interface: &str) -> Option<u32> {
    const SIOCGIFMTU: libc::c_ulong = 0x8921;
    // SAFETY: SIOCGIFMTU reads only the name and fills the union's mtu member.
    let req = unsafe { interface_ioctl(interface, SIOCGIFMTU, |_| {})? };
    // SAFETY: the member SIOCGIFMTU filled.
    Some(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// One SIOC* request about `interface` on a throwaway socket (so in the caller thread's
/// network namespace): the filled `ifreq`, or `None` when the request failed.
///
/// # Safety
/// `request` must be an interface ioctl whose argument is an `ifreq` as `prepare` leaves
/// it (pointers it stores must stay valid for the call).
unsafe fn interface_ioctl(
    interface: &str,
    request: libc::c_ulong,
    prepare: impl FnOnce(&mut libc::ifreq),
) -> Option<libc::ifreq> {
    if interface.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a plain C struct, zero is a valid start.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(interface.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    prepare(&mut req);
    // SAFETY: a socket we own and close; the request's validity is the caller's promise.
    let ok = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, request as _, &mut req);
        libc::close(fd);
        rc == 0
    };
    ok.then_some(req)
}

/// The index of `interface` in the caller's network namespace, if it exists.
pub fn interface_index(interface: &str) -> Option<u32> {
    ifindex(interface).ok()
}

pub(super) fn ifindex(interface: &str) -> Result<u32, BpfError> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| BpfError::NoInterface(interface.to_owned()))?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(BpfError::NoInterface(interface.to_owned())),
        i => Ok(i),
    }
}

/// The gateway's address towards `origin`: the one the kernel picks as source (a connected
/// UDP socket sends nothing). Data connections to or from the origin use it.
pub fn origin_side_ip(origin: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect((origin, 9))?;
    match socket.local_addr()? {
        std::net::SocketAddr::V4(a) => Ok(*a.ip()),
        std::net::SocketAddr::V6(_) => Err(std::io::Error::other("IPv6 source address")),
    }
}

/// The addresses (IPv4 and IPv6) configured on `interface` now.
pub fn interface_addresses(interface: &str) -> std::io::Result<Vec<IpAddr>> {
    let all = host_addresses()?;
    if !all.iter().any(|(name, _)| name == interface) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no interface `{interface}`"),
        ));
    }
    Ok(all
        .into_iter()
        .filter_map(|(name, a)| (name == interface).then_some(a).flatten())
        .collect())
}

/// Every interface of this host (network namespace) with each of its addresses (IPv4 and
/// IPv6); an interface without any appears once with `None`.
pub fn host_addresses() -> std::io::Result<Vec<(String, Option<IpAddr>)>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: a valid out-pointer; the list is freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not freed yet; its
        // name is a NUL-terminated string and its address, when not null, a sockaddr of
        // the family it names (sockaddr_in or sockaddr_in6).
        unsafe {
            let ifa = &*entry;
            entry = ifa.ifa_next;
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                .to_string_lossy()
                .into_owned();
            let addr = match ifa.ifa_addr.as_ref().map(|a| i32::from(a.sa_family)) {
                Some(libc::AF_INET) => {
                    let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))))
                }
                Some(libc::AF_INET6) => {
                    let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            };
            out.push((name, addr));
        }
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// Every IPv6 address of this host (namespace), link-local ones included.
pub(super) fn local_ipv6_addresses() -> Vec<Ipv6Addr> {
    let all = host_addresses().unwrap_or_else(|e| {
        warn!(error = %e, "cannot list the host's IPv6 addresses");
        Vec::new()
    });
    let mut out = Vec::new();
    for (_, addr) in all {
        if let Some(IpAddr::V6(ip)) = addr
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// Keeps the gateway's own sockets off the data ports (they are NAT ports too).
pub(super) fn reserve_ports(ranges: impl Iterator<Item = PortRange>) {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let current = std::fs::read_to_string(PATH).unwrap_or_default();
    if let Some(value) = with_reserved(&current, ranges) {
        set_sysctl("net/ipv4/ip_local_reserved_ports", &value);
    }
}

/// `ip_local_reserved_ports` as `current` with each of `ranges` added unless listed
/// already; `None` when nothing changes. Entries of others are kept as they are.
fn with_reserved(current: &str, ranges: impl Iterator<Item = PortRange>) -> Option<String> {
    let mut parts: Vec<String> = current
        .trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    for r in ranges {
        let part = format!("{}-{}", r.first, r.last);
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    let value = parts.join(",");
    (value != current.trim()).then_some(value)
}

/// Sets a sysctl unless it already has `value` (in containers /proc/sys is often
/// read-only and set by the platform).
pub(super) fn set_sysctl(key: &str, value: &str) {
    let path = format!("/proc/sys/{key}");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return;
    }
    match std::fs::write(&path, value) {
        Ok(()) => info!(key = %key.replace('/', "."), value, "sysctl set"),
        Err(e) => warn!(key = %key.replace('/', "."), value, error = %e, "cannot set sysctl"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        let lo = interface_addresses("lo").unwrap();
        assert!(lo.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{lo:?}");
        let err = interface_addresses("no-such-if0").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn reserved_ports_are_added_once_and_others_kept() {
        let range = |first, last| PortRange { first, last };
        let cases = [
            ("", vec![range(40000, 40099)], Some("40000-40099")),
            ("\n", vec![range(40000, 40099)], Some("40000-40099")),
            (
                "8080,9000-9010\n",
                vec![range(40000, 40099), range(50000, 50000)],
                Some("8080,9000-9010,40000-40099,50000-50000"),
            ),
            ("8080,40000-40099\n", vec![range(40000, 40099)], None),
            (
                "40000-40099",
                vec![range(40000, 40099), range(40000, 40099)],
                None,
            ),
            ("8080\n", vec![], None),
        ];
        for (current, ranges, expected) in cases {
            assert_eq!(
                with_reserved(current, ranges.into_iter()).as_deref(),
                expected,
                "{current:?}"
            );
        }
    }
}
