//! Socket addresses to and from the `sockaddr_storage` the batched calls read and write:
//! std's `SocketAddr` has no stable C layout, and socket2's `SockAddr` would be one more
//! 132-byte copy per message. Only `AF_INET` and `AF_INET6` exist here; anything else reads
//! as "no address".

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Writes `addr` into `out` and returns the length to pass to the kernel.
pub(super) fn write(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is at least as large as, and aligned for, every
            // sockaddr type (that is its purpose), so a sockaddr_in fits at its start.
            unsafe { (&raw mut *out).cast::<libc::sockaddr_in>().write(sin) };
            super::socklen_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, a sockaddr_in6 fits at the start of a sockaddr_storage.
            unsafe { (&raw mut *out).cast::<libc::sockaddr_in6>().write(sin6) };
            super::socklen_of::<libc::sockaddr_in6>()
        }
    }
}

/// The address the kernel wrote into `storage` (`len` bytes of it), if it is an IP one.
pub(super) fn read(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = usize::try_from(len).ok()?;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the kernel wrote a sockaddr_in, `len` says all of it,
            // and sockaddr_storage is large enough and aligned for one.
            let sin = unsafe { (&raw const *storage).cast::<libc::sockaddr_in>().read() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
            let sin6 = unsafe { (&raw const *storage).cast::<libc::sockaddr_in6>().read() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// An all-zero `sockaddr_storage` (family `AF_UNSPEC`).
pub(super) fn empty() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain C data for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_survive_the_round_trip() {
        for text in ["127.0.0.2:53", "0.0.0.0:0", "[::1]:65535", "[fe80::1%3]:8"] {
            let addr: SocketAddr = text.parse().unwrap();
            let mut storage = empty();
            let len = write(addr, &mut storage);
            assert_eq!(read(&storage, len), Some(addr), "{text}");
        }
    }

    #[test]
    fn short_or_foreign_addresses_read_as_none() {
        let mut storage = empty();
        assert_eq!(read(&storage, 128), None, "AF_UNSPEC");
        let len = write("10.0.0.1:80".parse().unwrap(), &mut storage);
        assert_eq!(read(&storage, len - 1), None, "truncated");
    }
}
