//! Facts about kernel network devices, read from sysfs (which `ip netns exec` remounts for
//! the namespace, so these see the namespace's devices).

use std::io;

fn read(dev: &str, attr: &str) -> io::Result<String> {
    if dev.is_empty() || dev.contains('/') || dev.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad device name {dev:?}"),
        ));
    }
    std::fs::read_to_string(format!("/sys/class/net/{dev}/{attr}"))
        .map(|s| s.trim().to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("device {dev}: reading {attr}: {e}")))
}

/// The device's MAC address.
pub fn device_mac(dev: &str) -> io::Result<[u8; 6]> {
    let text = read(dev, "address")?;
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in mac.iter_mut() {
        let part = parts
            .next()
            .ok_or_else(|| io::Error::other(format!("device {dev}: bad address {text}")))?;
        *b = u8::from_str_radix(part, 16)
            .map_err(|_| io::Error::other(format!("device {dev}: bad address {text}")))?;
    }
    Ok(mac)
}

pub fn device_mtu(dev: &str) -> io::Result<u16> {
    read(dev, "mtu")?
        .parse()
        .map_err(|_| io::Error::other(format!("device {dev}: bad mtu")))
}

/// Number of rx queues the device has (veth: as created with `numrxqueues`).
pub fn device_rx_queues(dev: &str) -> io::Result<u32> {
    let dir = format!("/sys/class/net/{dev}/queues");
    let n = std::fs::read_dir(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("device {dev}: {e}")))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    Ok(n as u32)
}

/// True when the device's carrier is up (link state for bond members).
pub fn device_carrier(dev: &str) -> bool {
    read(dev, "carrier").map(|s| s == "1").unwrap_or(false)
}
