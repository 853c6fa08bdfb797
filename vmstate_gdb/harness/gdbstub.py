"""QEMU's own gdbstub as an oracle: start it on a stopped VM (HMP `gdbserver`), read each vCPU's
registers with plain remote-protocol packets, and leave the VM as it was.

The stub is opened on a Unix socket and closed without a `D` packet: QEMU resumes a VM on detach,
but not when the connection just ends.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path


class StubClient:
    """A minimal remote-protocol client (acknowledged mode) for a few queries."""

    def __init__(self, path: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _read_byte(self) -> int:
        if not self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("gdbstub closed the connection")
            self.buf = data
        b, self.buf = self.buf[0], self.buf[1:]
        return b

    def request(self, packet: str) -> str:
        body = packet.encode()
        self.sock.sendall(b"$%s#%02x" % (body, sum(body) & 0xFF))
        while True:  # skip acks and notifications until the reply packet
            c = self._read_byte()
            if c == ord("$"):
                break
        out = bytearray()
        while (c := self._read_byte()) != ord("#"):
            out.append(c)
        self._read_byte(), self._read_byte()  # checksum
        self.sock.sendall(b"+")
        return out.decode()


def read_gdbstub(vm, cpus: int, extra_registers: list[int]) -> list[dict]:
    """For each vCPU: QEMU's ``g`` packet (hex) and ``p`` replies for ``extra_registers``."""
    path = str(Path(vm.qmp_path).with_name("gdb.sock"))
    vm.hmp(f"gdbserver unix:{path},server=on,wait=off")
    client = StubClient(path)
    try:
        client.request("qSupported:multiprocess+;xmlRegisters=aarch64,i386")
        # QEMU answers `p` only once the client has read the target description
        client.request("qXfer:features:read:target.xml:0,ffff")
        threads = client.request("qfThreadInfo")
        out = []
        for index in range(cpus):
            tid = f"p1.{index + 1:x}" if "p" in threads else f"{index + 1:x}"
            client.request(f"Hg{tid}")
            regs = {f"{n:x}": client.request(f"p{n:x}") for n in extra_registers}
            out.append({"g": client.request("g"), "p": regs})
        return out
    finally:
        client.close()
        vm.hmp("gdbserver none")
