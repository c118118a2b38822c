"""What the local server's processes are doing, read from Linux's ``/proc``: stubs, sockets, sessions.

Triton's own answers cannot be trusted for these questions: its readiness endpoint answers for
whichever process owns the port, and a python-backend model whose stub process died stays READY
while every request to it fails ("Stub process '<instance>' is not healthy"; the python backend no
longer restarts a dead stub by itself, triton-inference-server/server#8604). So the local server
looks at the processes themselves.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
STUB_BINARY = "triton_python_backend_stub"
TCP_LISTEN = "0A"  # st column of /proc/net/tcp for a listening socket
# argv of the stub, as the python backend launches it: the model's <model>/<version>/model.py is argv[1]
# and the instance name (e.g. "cats_head_0_0") argv[8].
STUB_MODEL_ARG = 1
STUB_INSTANCE_ARG = 8


@dataclass(frozen=True)
class StubProcess:
    """One python-backend stub: the process that runs one instance of one model."""

    pid: int  # process id of the stub
    model: str  # Triton model name (the directory above the version that holds model.py)
    instance: str  # Triton instance name, e.g. "cats_head_0_0"
    state: str  # /proc state letter: "Z" is a zombie (dead, not yet reaped)
    version: str = ""  # the version directory that holds model.py, e.g. "2"

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")

    @property
    def serves_requests(self) -> bool:
        """False for the short-lived stub the python backend starts while a model loads, to complete its config
        (``auto_complete_config``): it is named after the model itself, not ``<model>_<group>_<index>``, and
        exits by design about a second later. Taken for an instance, its exit looked like a death."""
        return self.instance != self.model


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) of a process, or None when it is gone or unreadable."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name in parentheses may hold spaces
    return fields[0], int(fields[1]), int(fields[3])


def _pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def stub_processes(server_pid: int) -> list[StubProcess]:
    """The python-backend stubs that ``server_pid`` started (its children running the stub binary)."""
    stubs = []
    for pid in _pids():
        stat = _stat(pid)
        if stat is None or stat[1] != server_pid:
            continue
        try:
            argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) <= STUB_INSTANCE_ARG or not argv[0].decode(errors="replace").endswith(STUB_BINARY):
            continue
        model_py = Path(argv[STUB_MODEL_ARG].decode(errors="replace"))
        stubs.append(StubProcess(pid, model_py.parent.parent.name, argv[STUB_INSTANCE_ARG].decode(errors="replace"),
                                 stat[0], model_py.parent.name))
    return stubs


def command_line(pid: int) -> list[str]:
    """The argv a process was started with; [] when it is gone or unreadable (another user's, a zombie)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def session_members(session_id: int) -> list[int]:
    """Live processes in a session: tritonserver starts its own, and its stubs inherit it."""
    members = []
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None and stat[2] == session_id and stat[0] not in ("Z", "X"):
            members.append(pid)
    return members


def environment(pid: int) -> dict[str, str]:
    """The environment a process was started with (readable for processes of the same user)."""
    raw = (PROC / str(pid) / "environ").read_bytes()
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def listening_inodes(port: int, host: str | None = None) -> set[int]:
    """Socket inodes of every TCP socket (v4 and v6) listening on ``port``, whoever owns them.

    With ``host``, only sockets that a connection to ``host:port`` could reach: bound to that address or
    to a wildcard (0.0.0.0, ::). Servers on 127.0.0.1:8001 and 127.0.0.2:8001 do not share a port.
    """
    wanted = _ip(host) if host is not None else None
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) <= 9 or cols[3] != TCP_LISTEN:
                continue
            address, _, hex_port = cols[1].rpartition(":")
            if int(hex_port, 16) != port:
                continue
            if wanted is not None:
                bound = _proc_address(address)
                mapped = getattr(bound, "ipv4_mapped", None)
                if not (bound.is_unspecified or bound == wanted or mapped == wanted):
                    continue
            inodes.add(int(cols[9]))
    return inodes


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:  # a name such as localhost
        return ipaddress.ip_address(socket.gethostbyname(host))


def _proc_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6} local address: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def socket_inodes(pid: int) -> set[int]:
    """Socket inodes open in process ``pid``."""
    inodes: set[int] = set()
    fd_dir = PROC / str(pid) / "fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes
