"""Read and set a NIC's channel (queue) counts through the kernel's SIOCETHTOOL ioctl.

The ioctl is used rather than the `ethtool` binary so the agent needs no extra package and gets
the kernel's errno directly; rather than ethtool netlink because it exists on every kernel the
fleet runs (netlink channels need 5.7+). The socket belongs to the network namespace of the
thread that created it, so callers in a namespace (`ip netns exec`) see that namespace's NICs.

Every errno the caller acts on has its own exception (`NoPermission`, `NotSupported`,
`InvalidRequest`, `InterfaceGone`), raised in one place, `_ioctl`.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
from dataclasses import asdict, dataclass

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x03
ETHTOOL_GCHANNELS = 0x3C
ETHTOOL_SCHANNELS = 0x3D

IFNAMSIZ = 16
_IFREQ_SIZE = 40  # struct ifreq on 64-bit: name[16], then a union whose largest member is 24 bytes
_CHANNELS = struct.Struct("=9I")  # cmd, max_rx, max_tx, max_other, max_combined, rx, tx, other, combined
_DRVINFO_SIZE = 196  # cmd, driver[32], version[32], fw[32], bus[32], erom[32], reserved[12], 5 x u32


class EthtoolError(Exception):
    """A channel read or change failed; `errno` is the kernel's answer, `interface` the NIC."""

    def __init__(self, interface: str, err: int, message: str):
        self.interface, self.errno = interface, err
        super().__init__(message)


class NoPermission(EthtoolError):
    """EPERM: changing channels needs CAP_NET_ADMIN in the NIC's network namespace."""


class NotSupported(EthtoolError):
    """EOPNOTSUPP: the driver does not report or cannot change its channels."""


class InvalidRequest(EthtoolError):
    """EINVAL: the kernel or driver refused these counts."""


class InterfaceGone(EthtoolError):
    """ENODEV: no such interface (deleted, renamed, or never there)."""


@dataclass(frozen=True)
class Channels:
    max_rx: int
    max_tx: int
    max_other: int
    max_combined: int
    rx: int
    tx: int
    other: int
    combined: int

    @property
    def style(self) -> str:
        """How this driver counts queues: "combined" (virtio_net, ena, mlx5: one count per
        rx/tx pair) or "rx-tx" (gve, veth: separate counts, max_combined 0)."""
        return "combined" if self.max_combined > 0 else "rx-tx"

    @property
    def queues(self) -> int:
        """Queue pairs in use: combined channels, or the smaller of rx and tx."""
        return self.combined if self.style == "combined" else min(self.rx, self.tx)

    @property
    def max_queues(self) -> int:
        return self.max_combined if self.style == "combined" else min(self.max_rx, self.max_tx)

    def with_queues(self, n: int) -> "Channels":
        """The request for `n` queue pairs; other counts stay as they are (as `ethtool -L` does)."""
        if self.style == "combined":
            return Channels(self.max_rx, self.max_tx, self.max_other, self.max_combined,
                            self.rx, self.tx, self.other, n)
        return Channels(self.max_rx, self.max_tx, self.max_other, self.max_combined,
                        n, n, self.other, self.combined)

    def to_dict(self) -> dict[str, int | str]:
        return {**asdict(self), "style": self.style, "queues": self.queues, "max_queues": self.max_queues}


def _describe(interface: str, err: int, op: str) -> EthtoolError:
    name = errno.errorcode.get(err, str(err))
    if err == errno.EPERM:
        return NoPermission(interface, err, f"{interface}: {op} needs CAP_NET_ADMIN, which this process lacks (EPERM)")
    if err == errno.EOPNOTSUPP:
        verb = "change" if op.startswith("set") else "report"
        return NotSupported(interface, err, f"{interface}: the driver cannot {verb} its channel count (EOPNOTSUPP)")
    if err == errno.ENODEV:
        return InterfaceGone(interface, err, f"{interface}: no such interface (ENODEV): deleted or renamed")
    if err == errno.EINVAL:
        return InvalidRequest(interface, err, (
            f"{interface}: the kernel refused {op} (EINVAL): a count is over its maximum, rx or tx would be "
            "left at zero, the RSS indirection table or an AF_XDP socket uses more queues than requested"))
    return EthtoolError(interface, err, f"{interface}: {op} failed: {name} ({os.strerror(err)})")


def _ioctl(interface: str, buf: ctypes.Array, op: str) -> None:
    encoded = interface.encode()
    if not encoded or len(encoded) >= IFNAMSIZ:
        raise ValueError(f"not a valid interface name: {interface!r}")
    ifreq = bytearray(_IFREQ_SIZE)
    struct.pack_into(f"{IFNAMSIZ}sP", ifreq, 0, encoded, ctypes.addressof(buf))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
        except OSError as e:
            raise _describe(interface, e.errno, op) from None


def get_channels(interface: str) -> Channels:
    """The NIC's channel maxima and current counts (needs no privilege)."""
    buf = ctypes.create_string_buffer(_CHANNELS.pack(ETHTOOL_GCHANNELS, *([0] * 8)), _CHANNELS.size)
    _ioctl(interface, buf, "reading channels")
    return Channels(*_CHANNELS.unpack(buf.raw)[1:])


def set_channels(interface: str, want: Channels) -> Channels:
    """Ask the kernel for `want`'s current counts, then read back what it actually has.

    Returns the read-back state; callers compare it with what they asked for, since success
    of the ioctl alone does not prove the driver kept the counts.
    """
    buf = ctypes.create_string_buffer(_CHANNELS.pack(
        ETHTOOL_SCHANNELS, want.max_rx, want.max_tx, want.max_other, want.max_combined,
        want.rx, want.tx, want.other, want.combined), _CHANNELS.size)
    _ioctl(interface, buf, "setting channels")
    return get_channels(interface)


def driver_name(interface: str) -> str | None:
    """The driver's name (ETHTOOL_GDRVINFO), or None when the driver does not say."""
    buf = ctypes.create_string_buffer(struct.pack("=I", ETHTOOL_GDRVINFO), _DRVINFO_SIZE)
    try:
        _ioctl(interface, buf, "reading driver info")
    except NotSupported:
        return None
    return buf.raw[4:36].split(b"\0", 1)[0].decode(errors="replace") or None
