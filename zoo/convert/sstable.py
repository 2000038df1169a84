"""The SSTable (LevelDB table format) of a tensor bundle's `.index` file, read and written without
TensorFlow (tensorflow/core/lib/io/table_builder.cc, format.cc, block_builder.cc).

A table is a sequence of blocks, each followed by a 5-byte trailer [compression type][masked CRC32C
of contents + type]; a data block holds prefix-compressed entries (varint shared, varint unshared,
varint value length, key delta, value) followed by restart offsets; an index block maps a separator
key ≥ each data block's last key to that block's handle (varint offset, varint size); a 48-byte
footer holds the metaindex and index handles and the magic 0xdb4775248b80fb57. TensorFlow writes
tables uncompressed. Every block's CRC is checked.

The errors of a bundle checkpoint are defined here, at the bottom of the format, so that the index
(this module) and the tensors (zoo/convert/tensor_bundle.py) raise the same ones.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from ..errors import ZooError
from .crc32c import crc32c, mask_crc, unmask_crc

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 2 × 20 bytes, then the 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type byte + fixed32 masked CRC
NO_COMPRESSION, SNAPPY_COMPRESSION = 0, 1


class BundleError(ZooError, ValueError):
    """A checkpoint file is corrupt, truncated or not a tensor bundle."""


class UnsupportedBundleError(BundleError):
    """A valid checkpoint uses a feature this reader does not implement (TensorFlow's reader may)."""

# ------------------------------------------------------------------------------------------ varints


def read_varint(buf: bytes | memoryview, pos: int, limit: int, what: str) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= limit or shift > 63:
            raise BundleError(f"bad varint in {what}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)

# ------------------------------------------------------------------------------------------ reading


def _read_block(data: bytes, offset: int, size: int, label: str, what: str) -> memoryview:
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(data):
        raise BundleError(f"{label} is truncated: the {what} at bytes [{offset}, {end + BLOCK_TRAILER_SIZE}) "
                          f"runs past the end of the file ({len(data)} bytes)")
    contents = memoryview(data)[offset:end]
    compression = data[end]
    stored = int.from_bytes(data[end + 1:end + 5], "little")
    if unmask_crc(stored) != crc32c(data[end:end + 1], crc32c(contents)):
        raise BundleError(f"{label} is corrupt: CRC mismatch in the {what} at byte {offset}")
    if compression == SNAPPY_COMPRESSION:
        raise UnsupportedBundleError(f"{label} has snappy-compressed blocks (not written by TensorFlow's "
                                     "BundleWriter); read it with TensorFlow (reader='tensorflow')")
    if compression != NO_COMPRESSION:
        raise BundleError(f"{label} is corrupt: unknown block compression type {compression} in the {what}")
    return contents


def _block_entries(block: memoryview, label: str, what: str) -> list[tuple[bytes, bytes]]:
    """Decode one block's prefix-compressed entries (keys must come out strictly increasing)."""
    if len(block) < 4:
        raise BundleError(f"{label} is corrupt: {what} is {len(block)} bytes, too short for its restart count")
    num_restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * num_restarts
    if num_restarts == 0 or limit < 0:
        raise BundleError(f"{label} is corrupt: {what} has an impossible restart count {num_restarts}")
    entries, pos, key = [], 0, b""
    while pos < limit:
        shared, pos = read_varint(block, pos, limit, f"{label} {what}")
        unshared, pos = read_varint(block, pos, limit, f"{label} {what}")
        value_length, pos = read_varint(block, pos, limit, f"{label} {what}")
        if shared > len(key) or pos + unshared + value_length > limit:
            raise BundleError(f"{label} is corrupt: bad entry at byte {pos} of the {what}")
        new_key = key[:shared] + bytes(block[pos:pos + unshared])
        pos += unshared
        if entries and new_key <= key:
            raise BundleError(f"{label} is corrupt: keys out of order in the {what} ({key!r} then {new_key!r})")
        key = new_key
        entries.append((key, bytes(block[pos:pos + value_length])))
        pos += value_length
    return entries


def _decode_handle(buf: bytes | memoryview, pos: int, label: str) -> tuple[int, int, int]:
    offset, pos = read_varint(buf, pos, len(buf), f"{label} block handle")
    size, pos = read_varint(buf, pos, len(buf), f"{label} block handle")
    return offset, size, pos


def read_table(path: str | os.PathLike) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of an SSTable file, in key order, with every block CRC checked."""
    label = str(path)
    data = Path(path).read_bytes()
    if len(data) < FOOTER_SIZE:
        raise BundleError(f"{label} is truncated or not a TensorFlow checkpoint index "
                          f"({len(data)} bytes, shorter than the {FOOTER_SIZE}-byte table footer)")
    footer = data[-FOOTER_SIZE:]
    if int.from_bytes(footer[40:48], "little") != TABLE_MAGIC:
        raise BundleError(f"{label} is truncated or not a TensorFlow checkpoint index (bad table magic)")
    _, _, pos = _decode_handle(footer, 0, label)  # metaindex: holds nothing TensorFlow reads
    index_offset, index_size, _ = _decode_handle(footer, pos, label)
    index = _block_entries(_read_block(data, index_offset, index_size, label, "index block"), label, "index block")
    entries: list[tuple[bytes, bytes]] = []
    for number, (_, handle) in enumerate(index):
        offset, size, _ = _decode_handle(handle, 0, label)
        block = _read_block(data, offset, size, label, f"data block {number}")
        for key, value in _block_entries(block, label, f"data block {number}"):
            if entries and key <= entries[-1][0]:
                raise BundleError(f"{label} is corrupt: keys out of order across data blocks")
            entries.append((key, value))
    return entries

# ------------------------------------------------------------------------------------------ writing


class _BlockBuilder:
    """LevelDB's BlockBuilder: prefix-compressed entries with a restart point every `interval`."""

    def __init__(self, interval: int):
        self.interval = interval
        self.buffer = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last_key = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.interval:
            limit = min(len(self.last_key), len(key))
            while shared < limit and self.last_key[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buffer))
            self.counter = 0
        self.buffer += encode_varint(shared) + encode_varint(len(key) - shared) + encode_varint(len(value))
        self.buffer += key[shared:] + value
        self.last_key = key
        self.counter += 1

    def size_estimate(self) -> int:
        return len(self.buffer) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        return bytes(self.buffer) + b"".join(struct.pack("<I", r) for r in self.restarts) + struct.pack("<I", len(self.restarts))

    @property
    def empty(self) -> bool:
        return not self.buffer


def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    """BytewiseComparator::FindShortestSeparator: a short key in [start, limit)."""
    common = 0
    while common < min(len(start), len(limit)) and start[common] == limit[common]:
        common += 1
    if common < min(len(start), len(limit)):
        byte = start[common]
        if byte < 0xFF and byte + 1 < limit[common]:
            return start[:common] + bytes([byte + 1])
    return start


def _short_successor(key: bytes) -> bytes:
    """BytewiseComparator::FindShortSuccessor: a short key ≥ `key`."""
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes([byte + 1])
    return key


def build_table(items: list[tuple[bytes, bytes]], block_size: int = 262144, restart_interval: int = 16) -> bytes:
    """An SSTable of sorted `items`, laid out as TensorFlow's TableBuilder lays it out."""
    out = bytearray()

    def write_block(contents: bytes) -> bytes:
        offset = len(out)
        out.extend(contents)
        out.extend(bytes([NO_COMPRESSION]) + struct.pack("<I", mask_crc(crc32c(bytes([NO_COMPRESSION]), crc32c(contents)))))
        return encode_varint(offset) + encode_varint(len(contents))

    data_block = _BlockBuilder(restart_interval)
    index_block = _BlockBuilder(1)
    pending_handle, last_key = None, None
    for key, value in items:
        if last_key is not None and key <= last_key:
            raise BundleError(f"table keys must be strictly increasing: {last_key!r} then {key!r}")
        if pending_handle is not None:
            index_block.add(_shortest_separator(last_key, key), pending_handle)
            pending_handle = None
        data_block.add(key, value)
        last_key = key
        if data_block.size_estimate() >= block_size:
            pending_handle = write_block(data_block.finish())
            data_block = _BlockBuilder(restart_interval)
    if not data_block.empty:
        pending_handle = write_block(data_block.finish())
    metaindex_handle = write_block(_BlockBuilder(restart_interval).finish())
    if pending_handle is not None:
        index_block.add(_short_successor(last_key), pending_handle)
    index_handle = write_block(index_block.finish())
    footer = (metaindex_handle + index_handle).ljust(FOOTER_SIZE - 8, b"\0")
    out.extend(footer + struct.pack("<II", TABLE_MAGIC & 0xFFFFFFFF, TABLE_MAGIC >> 32))
    return bytes(out)
