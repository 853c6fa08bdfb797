"""libvirt ``virsh save`` / managed-save images.

Layout (libvirt src/qemu/qemu_saveimage.h, struct virQEMUSaveHeader; host-endian u32 fields)::

    0   char magic[16]     "LibvirtQemudSave" ("LibvirtQemudPart" while libvirt is still writing)
    16  u32 version        1 or 2
    20  u32 data_len       bytes of domain XML (+ cookie XML, + NUL padding) that follow the header
    24  u32 was_running
    28  u32 compressed     image format: 0 raw, 1 gzip, 2 bzip2, 3 xz, 4 lzop, 5 zstd
    32  u32 cookieOffset   version 2: where the cookie XML starts inside the data, 0 = none
    36  u32 unused[14]
    92  domain XML (NUL terminated), cookie, padding; then the QEMU stream (compressed or not)
"""

from __future__ import annotations

import struct

from ..errors import FormatError, UnsupportedError
from ._mapped import MappedFile
from .decompress import Decompressed, decompress
from .plain import QEVM_MAGIC, PlainStream, check_qevm

MAGIC = b"LibvirtQemudSave"
PARTIAL_MAGIC = b"LibvirtQemudPart"
HEADER_SIZE = 16 + 4 * 5 + 4 * 14  # 92
MAX_DATA_LEN = 64 << 20  # libvirt itself refuses much smaller XML; this only guards corrupt headers
STREAM_SCAN_WINDOW = 1 << 20

COMPRESSION = {0: "raw", 1: "gzip", 2: "bzip2", 3: "xz", 4: "lzop", 5: "zstd"}


def _decode(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace")


class LibvirtHeader:
    """The parsed header and XML of a libvirt save image."""

    def __init__(self, f: MappedFile):
        path = f.path
        magic = f.bytes(0, 16, "libvirt save header magic")
        if magic == PARTIAL_MAGIC:
            raise FormatError(
                "libvirt save image is incomplete (magic LibvirtQemudPart): libvirt did not "
                "finish writing it, so it holds no usable VM state",
                path,
                0,
            )
        if magic != MAGIC:
            raise FormatError(f"not a libvirt save image: magic is {magic!r}", path, 0)
        f.check(0, HEADER_SIZE, "libvirt save header (92 bytes)")
        endian = "<"
        (version,) = f.unpack("<I", 16, "libvirt header version")
        if version not in (1, 2) and struct.unpack(">I", struct.pack("<I", version))[0] in (1, 2):
            endian = ">"  # written on a big-endian host (libvirt byte-swaps such headers too)
        version, data_len, was_running, compressed, cookie_off = f.unpack(endian + "5I", 16, "libvirt header")
        if version not in (1, 2):
            raise UnsupportedError(
                f"libvirt save image version {version} is not known (1 and 2 are)", path, 16
            )
        if data_len > MAX_DATA_LEN:
            raise FormatError(f"libvirt header data_len {data_len} is implausibly large", path, 20)
        f.check(HEADER_SIZE, data_len, f"libvirt domain XML ({data_len} bytes)")
        data = f.bytes(HEADER_SIZE, data_len, "libvirt domain XML")
        if version >= 2 and cookie_off:
            if cookie_off > data_len:
                raise FormatError(
                    f"libvirt cookieOffset {cookie_off} is past the XML data ({data_len} bytes)", path, 32
                )
            self.xml = _decode(data[:cookie_off])
            self.cookie: str | None = _decode(data[cookie_off:])
        else:
            self.xml = _decode(data)
            self.cookie = None
        self.endian = "little" if endian == "<" else "big"
        self.version = version
        self.data_len = data_len
        self.was_running = bool(was_running)
        self.compressed = compressed
        self.cookie_offset = cookie_off
        self.data_end = HEADER_SIZE + data_len

    @property
    def compression(self) -> str:
        return COMPRESSION.get(self.compressed, f"unknown format code {self.compressed}")


class LibvirtSave(PlainStream):
    """The QEMU stream inside a libvirt save image; a compressed one is decompressed first
    (:mod:`.decompress`) and served from that file, so stream offsets are not image offsets then."""

    def __init__(self, path: str, *, mapped: MappedFile | None = None, progress=None):
        f = mapped if mapped is not None else MappedFile(path)
        self.decompressed: Decompressed | None = None
        try:
            hdr = LibvirtHeader(f)
            if hdr.compressed != 0:
                name = COMPRESSION.get(hdr.compressed)
                if name is None:
                    raise UnsupportedError(
                        f"libvirt save image stream has unknown compression format {hdr.compressed}"
                        " (0 raw, 1 gzip, 2 bzip2, 3 xz, 4 lzop, 5 zstd are known)",
                        path,
                        28,
                    )
                if hdr.data_end >= f.size:
                    raise FormatError(
                        f"libvirt save image ends after its XML: no {name} stream follows", path, hdr.data_end
                    )
                f.close()
                self.decompressed = d = decompress(path, hdr.data_end, name, progress)
                f = MappedFile(path, d.fd) if d.path is None else MappedFile(d.path)
                f.path = path  # errors name the user's image
                super().__init__(path, 0, mapped=f, kind="libvirt")
                self.header = hdr
                return
            start = f.find(QEVM_MAGIC, hdr.data_end, hdr.data_end + STREAM_SCAN_WINDOW)
            if start < 0:
                got = (
                    f.bytes(hdr.data_end, min(8, f.size - hdr.data_end), "stream start")
                    if hdr.data_end < f.size
                    else b""
                )
                check_qevm(got, path, hdr.data_end, "QEMU stream after the libvirt XML")
                start = hdr.data_end  # unreachable: check_qevm raised
            super().__init__(path, start, mapped=f, kind="libvirt")
        except BaseException:
            f.close()
            if self.decompressed is not None:
                self.decompressed.close()
            raise
        self.header = hdr

    def open_stream_file(self):
        if self.decompressed is not None:
            return self.decompressed.open()
        return super().open_stream_file()

    def close(self) -> None:
        super().close()
        if self.decompressed is not None:
            self.decompressed.close()

    def describe(self) -> dict:
        d = super().describe()
        h = self.header
        d.update(
            libvirt_version=h.version,
            endian=h.endian,
            xml=h.xml,
            cookie=h.cookie,
            was_running=h.was_running,
            compression=h.compression,
            data_len=h.data_len,
        )
        if self.decompressed is not None:
            d.update(decompressed_to=self.decompressed.where, stream_offset=None)
        return d
