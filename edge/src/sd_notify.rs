//! The systemd notification protocol (`sd_notify(3)`): `READY=1` once storage is open and every
//! listener is bound, `WATCHDOG=1` pings while the runtime is alive, `STOPPING=1` on drain.
//! A no-op when `NOTIFY_SOCKET` is unset (not run by systemd with `Type=notify`).

use std::time::Duration;

/// Sends one notification; errors are logged, never fatal (systemd may not be listening).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

#[cfg(target_os = "linux")]
fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = path.as_bytes();
    let addr = match bytes.first() {
        // A leading '@' names a socket in the abstract namespace.
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
        _ => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    // Never block the runtime: if the manager is not reading, the notification is dropped.
    socket.set_nonblocking(true)?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn send(_path: &std::ffi::OsStr, _state: &str) -> std::io::Result<()> {
    Ok(())
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process), halved as
/// `sd_watchdog_enabled(3)` recommends.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
