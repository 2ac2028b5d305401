//! The host around the programs: interface look-ups (index, MTU, driver) in the caller
//! thread's network namespace.
use super::BpfError;

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
