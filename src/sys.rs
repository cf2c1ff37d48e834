//! The one place with `unsafe`: kernel queries the standard library and
//! socket2 do not offer, and taking ownership of a descriptor received from
//! another process.

#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

/// Makes the socket behind `fd` close with RST (`SO_LINGER {on, 0}`): for
/// the client connections still in flight when `shutdown_timeout` ends the
/// process, whose responses must not end in a clean close that would pass
/// them off as whole, and for a TLS handshake that timed out (its socket
/// still held by the handshake). Failures (the connection closed
/// meanwhile) are ignored.
pub fn reset_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `setsockopt` reads `size_of::<linger>()` bytes through the
    // pointer, which points at `linger`, a live `libc::linger` on this
    // stack frame; no memory is written. `fd` is a raw number, not a
    // borrowed descriptor: if its connection closed meanwhile and the
    // number was reused, the call sets the option on (or fails with
    // ENOTSOCK on) another descriptor of this process, which is about to
    // exit and close them all; memory safety does not depend on it.
    let _ = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Bytes written to `sock` that the peer has not acknowledged yet (the send
/// queue, `SIOCOUTQ`). `None` where the kernel does not say.
pub fn unsent_bytes(sock: &impl AsRawFd) -> Option<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: `ioctl(fd, SIOCOUTQ, int*)` (SIOCOUTQ shares its number with
    // TIOCOUTQ) writes one `int` through the pointer, which points at `n`, a
    // live, aligned `c_int` on this stack frame. The fd is borrowed from a
    // live socket for the duration of the call; on any failure the kernel
    // writes nothing and we return `None`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    (rc == 0).then(|| u32::try_from(n).unwrap_or(0))
}

/// Bytes the peer sent that `sock` has not read yet (the receive queue,
/// `FIONREAD`). `None` where the kernel does not say.
pub fn unread_bytes(sock: &impl AsRawFd) -> Option<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: `ioctl(fd, FIONREAD, int*)` writes one `int` through the
    // pointer, which points at `n`, a live, aligned `c_int` on this stack
    // frame. The fd is borrowed from a live socket for the duration of the
    // call; on any failure the kernel writes nothing and we return `None`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n as *mut libc::c_int) };
    (rc == 0).then(|| u32::try_from(n).unwrap_or(0))
}

/// `TCP_CLOSE` in the kernel's `enum tcp_state` (`include/net/tcp_states.h`);
/// the libc crate does not name it.
const TCP_CLOSE: u8 = 7;

/// Whether the connection is over at the TCP level (`TCP_CLOSE`: reset by the
/// peer, or closed both ways). Its send queue then never drains: what was
/// unacknowledged when the reset came stays counted in `SIOCOUTQ`.
pub fn tcp_closed(sock: &impl AsRawFd) -> bool {
    tcp_info(sock).is_some_and(|i| i.tcpi_state == TCP_CLOSE)
}

/// Whether the peer's TCP stack still answers: no retransmission waits
/// for an acknowledgement (`tcpi_retransmits`), and at most one probe of
/// its shut window does (`tcpi_probes`, the probes sent since the last
/// acknowledgement). One is usual: the last may be on its way, and a
/// receiver answers such probes at most once per `tcp_invalid_ratelimit`
/// (500 ms), while the first probes come faster. A client whose program
/// sleeps with its receive buffer full answers; one whose host or network
/// went away does not, and its probes pile up.
pub fn peer_answers(sock: &impl AsRawFd) -> bool {
    tcp_info(sock).is_some_and(|i| answers(&i))
}

/// [`peer_answers`], of one reading.
fn answers(i: &libc::tcp_info) -> bool {
    i.tcpi_state != TCP_CLOSE && i.tcpi_probes <= 1 && i.tcpi_retransmits == 0
}

/// Whether the peer's host is gone: it does not answer ([`peer_answers`]:
/// a retransmission, or a probe of its shut window after another, went
/// unanswered) and nothing at all came back from it for `silent`, or the
/// connection is over. A peer that reads nothing but whose stack answers
/// (its window shut, its probes acknowledged) is not gone; nor is one with
/// nothing to acknowledge.
pub fn peer_gone(sock: &impl AsRawFd, silent: std::time::Duration) -> bool {
    tcp_info(sock).is_some_and(|i| {
        i.tcpi_state == TCP_CLOSE || (!answers(&i) && u128::from(i.tcpi_last_ack_recv) >= silent.as_millis())
    })
}

/// Bounds the orphan that closing `sock` will leave: the kernel drops it
/// after `within` of unanswered (re)transmissions (`TCP_USER_TIMEOUT`),
/// instead of after its own retries (`tcp_orphan_retries`, about two
/// minutes), should the peer's host have gone away unseen. Only when that
/// cuts nothing the peer would still take:
/// - everything queued has gone out once and the FIN fits in the window the
///   peer offers: a live peer's stack acknowledges all of it within a round
///   trip, whether its program reads or not;
/// - or the peer does not answer ([`peer_answers`]).
///
/// A live peer whose window is shut (asleep, its buffer full), with bytes
/// queued or only the FIN, would be cut by the bound once it slept that
/// long (Linux counts unanswered window probes against it since 5.11), and
/// see a reset where a FIN was due; its orphan is left to the kernel, as
/// after nginx's close. Returns whether it bounded.
pub fn bound_orphan<S: AsRawFd + std::os::fd::AsFd>(sock: &S, within: std::time::Duration) -> bool {
    let Some(i) = tcp_info(sock) else {
        return false;
    };
    // All out: nothing unsent, and what is unacknowledged (`SIOCOUTQ`) leaves
    // the FIN room in the window. A kernel older than 5.4 reports no window
    // (zero): never bounded so.
    let all_out = || i.tcpi_notsent_bytes == 0 && unsent_bytes(sock).is_some_and(|q| q < i.tcpi_snd_wnd);
    let bound = !answers(&i) || all_out();
    if bound {
        let _ = socket2::SockRef::from(sock).set_tcp_user_timeout(Some(within));
    }
    bound
}

fn tcp_info(sock: &impl AsRawFd) -> Option<libc::tcp_info> {
    // SAFETY: `tcp_info` is a plain struct of integers, for which all zero
    // bytes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `getsockopt(fd, IPPROTO_TCP, TCP_INFO, buf, &len)` writes at
    // most `len` bytes into `buf`, which points at `info`, a live, aligned
    // `tcp_info` of exactly `len` bytes on this stack frame, and updates
    // `len`, a live `socklen_t`. The fd is borrowed from a live socket for
    // the duration of the call. A kernel with a shorter `tcp_info` writes
    // fewer bytes; the rest stays zero.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

/// Takes ownership of a listening socket received from another process
/// (`SCM_RIGHTS`, see `handoff`), checking that it is one.
pub fn inherited_listener(fd: std::os::fd::RawFd) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was installed in this process's descriptor table by the
    // kernel when `recvmsg` delivered it (SCM_RIGHTS) moments ago; nothing
    // else in the process knows its number, so wrapping it here makes this
    // the one owner, which closes it exactly once.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let sock = socket2::Socket::from(owned);
    if sock.r#type()? != socket2::Type::STREAM || !sock.is_listener()? {
        return Err(std::io::Error::other("not a listening TCP socket"));
    }
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Watches an idle set's epoll instance for readiness in tokio's reactor.
pub fn watch_epoll(poll: mio::Poll) -> std::io::Result<tokio::io::unix::AsyncFd<mio::Poll>> {
    // SAFETY: `mio::Poll` owns its epoll descriptor (an `OwnedFd`) and closes
    // it only when dropped; the `AsyncFd` takes ownership of the `Poll`, so
    // the descriptor stays valid and unreplaced for as long as it is
    // registered, and `AsyncFd`'s drop deregisters it before the `Poll` drops.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`,
/// inherited by children); returns whether it took.
pub fn disable_thp() -> bool {
    // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` takes only integer
    // arguments and touches no memory of ours; it sets a flag on the process.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_send_queue_of_a_socket_whose_peer_does_not_read_fills() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_peer, _) = l.accept().unwrap();
        assert_eq!(unsent_bytes(&c), Some(0));
        c.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 1 << 16];
        // Fill until the kernel refuses: the peer never reads.
        for _ in 0..10_000 {
            if c.write(&chunk).is_err() {
                break;
            }
        }
        // On loopback ACKs come at once, so the queue may be acknowledged but
        // unread by the peer; what stays unsent is what its window refused.
        assert!(unsent_bytes(&c).is_some_and(|n| n > 0));
    }
}
