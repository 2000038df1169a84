"""TensorFlow's tensor-bundle checkpoint format ("V2" checkpoints), read and written without TensorFlow.

A checkpoint with prefix P is two kinds of file (tensorflow/core/util/tensor_bundle):

    P.index                  an SSTable (the LevelDB table format) mapping keys to serialized protos:
                                 ""          → BundleHeaderProto {num_shards, endianness, version}
                                 tensor name → BundleEntryProto  {dtype, shape, shard_id, offset, size,
                                                                  crc32c, slices}
    P.data-<i>-of-<n>        the tensors' bytes, C order, at the entries' offsets

The SSTable (tensorflow/core/lib/io/table_builder.cc, format.cc, block_builder.cc) is a sequence of
blocks, each followed by a 5-byte trailer [compression type][masked CRC32C of contents + type]; a data
block holds prefix-compressed entries (varint shared, varint unshared, varint value length, key delta,
value) followed by restart offsets; an index block maps a separator key ≥ each data block's last key
to that block's handle (varint offset, varint size); a 48-byte footer holds the metaindex and index
handles and the magic 0xdb4775248b80fb57. TensorFlow writes bundles uncompressed.

Everything checksummed is checked: every block's CRC and every tensor's CRC (masked CRC32C, as
TensorFlow's `crc32c::Mask`). Corrupt or truncated files raise `BundleError` naming the file and what
is wrong; valid features this reader does not implement (snappy blocks, partitioned variables, variant
tensors) raise `UnsupportedBundleError`, so a caller can fall back to TensorFlow's own reader.

`write_bundle` writes the same layout (TensorFlow's BundleWriter and TableBuilder byte for byte, for
the tensor kinds it supports), so tests can build checkpoints without TensorFlow.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import ZooError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 2 × 20 bytes, then the 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type byte + fixed32 masked CRC
NO_COMPRESSION, SNAPPY_COMPRESSION = 0, 1
HEADER_KEY = b""
BUNDLE_VERSION = 1  # kTensorBundleVersion: what this module reads and writes
LITTLE, BIG = 0, 1  # BundleHeaderProto.Endianness

# TensorFlow DataType enum (tensorflow/core/framework/types.proto) → numpy dtype
DT_STRING, DT_BFLOAT16, DT_VARIANT = 7, 14, 21
NUMPY_DTYPES = {
    1: np.dtype("float32"),
    2: np.dtype("float64"),
    3: np.dtype("int32"),
    4: np.dtype("uint8"),
    5: np.dtype("int16"),
    6: np.dtype("int8"),
    9: np.dtype("int64"),
    10: np.dtype("bool"),
    17: np.dtype("uint16"),
    19: np.dtype("float16"),
    22: np.dtype("uint32"),
    23: np.dtype("uint64"),
}
TF_DTYPES = {dtype: code for code, dtype in NUMPY_DTYPES.items()}
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
               9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 19: "float16", 21: "variant",
               22: "uint32", 23: "uint64"}


class BundleError(ZooError, ValueError):
    """A checkpoint file is corrupt, truncated or not a tensor bundle."""


class UnsupportedBundleError(BundleError):
    """A valid checkpoint uses a feature this reader does not implement (TensorFlow's reader may)."""


# ------------------------------------------------------------------------------------------ CRC32C


@lru_cache(maxsize=1)
def _crc_table() -> np.ndarray:
    """Byte table of CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    table = np.zeros(256, dtype=np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table[byte] = crc
    return table


def _register_update(register: int, data: bytes) -> int:
    """The CRC register after feeding `data` (no pre/post inversion); byte at a time."""
    table = _crc_table().tolist()
    for byte in data:
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


_CHUNK = 4096  # bytes per lane of the vectorised CRC


@lru_cache(maxsize=1)
def _zero_shift_tables() -> list[list[int]]:
    """The linear map "feed _CHUNK zero bytes" on the CRC register, as four byte-lookup tables.

    Feeding zeros is linear over GF(2), so it is fixed by the images of the 32 unit registers; the
    tables let the vectorised CRC combine lanes with four lookups per lane.
    """
    table = _crc_table()
    registers = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
    for _ in range(_CHUNK):
        registers = table[registers & 0xFF] ^ (registers >> np.uint32(8))
    images = [int(r) for r in registers]
    tables = []
    for byte_index in range(4):
        rows = []
        for value in range(256):
            image = 0
            for bit in range(8):
                if value >> bit & 1:
                    image ^= images[8 * byte_index + bit]
            rows.append(image)
        tables.append(rows)
    return tables


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C of `data`, extending `crc` (as TensorFlow's / LevelDB's `crc32c::Extend`).

    Large inputs are split into lanes of _CHUNK bytes whose registers numpy advances together;
    the lanes are then chained with the precomputed zero-shift map (the CRC is affine in the
    register), so gigabyte checkpoints are checked in seconds without a C extension.
    """
    data = memoryview(data).cast("B")
    register = crc ^ 0xFFFFFFFF
    lanes = len(data) // _CHUNK
    if lanes < 16:
        return _register_update(register, data) ^ 0xFFFFFFFF
    table = _crc_table()
    block = np.frombuffer(data, dtype=np.uint8, count=lanes * _CHUNK).reshape(lanes, _CHUNK).T.copy()
    lane_registers = np.zeros(lanes, dtype=np.uint32)
    for column in block:
        lane_registers = table[(lane_registers ^ column) & 0xFF] ^ (lane_registers >> np.uint32(8))
    t0, t1, t2, t3 = _zero_shift_tables()
    for lane_register in lane_registers.tolist():
        register = (t0[register & 0xFF] ^ t1[register >> 8 & 0xFF] ^ t2[register >> 16 & 0xFF]
                    ^ t3[register >> 24]) ^ lane_register
    register = _register_update(register, data[lanes * _CHUNK:])
    return register ^ 0xFFFFFFFF


_MASK_DELTA = 0xA282EAD8


def mask_crc(crc: int) -> int:
    """TensorFlow's crc32c::Mask: rotate right by 15 and add a constant (stored CRCs are masked)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rotated = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF


# ------------------------------------------------------------------------- varints and protobuf


def _read_varint(buf: bytes | memoryview, pos: int, limit: int, what: str) -> tuple[int, int]:
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


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _proto_fields(buf: bytes, what: str) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a serialized protobuf message (unknown fields kept)."""
    fields, pos, end = [], 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos, end, what)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos, end, what)
        elif wire == 1:
            if pos + 8 > end:
                raise BundleError(f"truncated fixed64 in {what}")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos, end, what)
            if pos + length > end:
                raise BundleError(f"truncated length-delimited field {number} in {what}")
            value, pos = bytes(buf[pos:pos + length]), pos + length
        elif wire == 5:
            if pos + 4 > end:
                raise BundleError(f"truncated fixed32 in {what}")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise BundleError(f"unsupported protobuf wire type {wire} (field {number}) in {what}")
        fields.append((number, wire, value))
    return fields


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True)
class BundleEntry:
    """One tensor's BundleEntryProto."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored
    sliced: bool

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, f"DataType {self.dtype}")


def _parse_shape(buf: bytes, what: str) -> tuple[int, ...]:
    dims, unknown_rank = [], False
    for number, _, value in _proto_fields(buf, what):
        if number == 2:  # repeated Dim dim = 2 { int64 size = 1; string name = 2; }
            size = 0
            for dim_number, _, dim_value in _proto_fields(value, what):
                if dim_number == 1:
                    size = _signed64(dim_value)
            dims.append(size)
        elif number == 3:
            unknown_rank = bool(value)
    if unknown_rank or any(d < 0 for d in dims):
        raise BundleError(f"{what}: tensor shape is not fully defined ({dims}, unknown_rank={unknown_rank})")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes, what: str) -> BundleEntry:
    dtype, shape, shard_id, offset, size, crc, sliced = 0, (), 0, 0, 0, 0, False
    for number, _, value in _proto_fields(buf, what):
        if number == 1:
            dtype = value
        elif number == 2:
            shape = _parse_shape(value, what)
        elif number == 3:
            shard_id = value
        elif number == 4:
            offset = _signed64(value)
        elif number == 5:
            size = _signed64(value)
        elif number == 6:
            crc = value
        elif number == 7:
            sliced = True
    if offset < 0 or size < 0:
        raise BundleError(f"{what}: negative offset/size in the entry of {name!r}")
    return BundleEntry(name, dtype, shape, shard_id, offset, size, crc, sliced)


def _encode_field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _encode_message(number: int, body: bytes) -> bytes:
    return _encode_field(number, 2, _varint(len(body)) + body)


def _encode_entry(dtype: int, shape: tuple[int, ...], offset: int, size: int, crc: int) -> bytes:
    """BundleEntryProto as protobuf serializes it: fields in number order, proto3 defaults omitted,
    the shape message always present (TensorFlow sets it even for scalars)."""
    dims = b"".join(_encode_message(2, _encode_field(1, 0, _varint(d)) if d else b"") for d in shape)
    out = _encode_field(1, 0, _varint(dtype)) + _encode_message(2, dims)
    if offset:
        out += _encode_field(4, 0, _varint(offset))
    if size:
        out += _encode_field(5, 0, _varint(size))
    return out + _encode_field(6, 5, struct.pack("<I", crc))


def _encode_header(num_shards: int) -> bytes:
    version = _encode_field(1, 0, _varint(BUNDLE_VERSION))  # VersionDef{producer}, min_consumer 0 omitted
    return _encode_field(1, 0, _varint(num_shards)) + _encode_message(3, version)


# ----------------------------------------------------------------------------------- SSTable


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
        shared, pos = _read_varint(block, pos, limit, f"{label} {what}")
        unshared, pos = _read_varint(block, pos, limit, f"{label} {what}")
        value_length, pos = _read_varint(block, pos, limit, f"{label} {what}")
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
    offset, pos = _read_varint(buf, pos, len(buf), f"{label} block handle")
    size, pos = _read_varint(buf, pos, len(buf), f"{label} block handle")
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
        self.buffer += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
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
        return _varint(offset) + _varint(len(contents))

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


# ------------------------------------------------------------------------------------ bundles


def index_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.index")


def data_path(prefix: str | os.PathLike, shard: int, num_shards: int) -> Path:
    return Path(f"{os.fspath(prefix)}.data-{shard:05d}-of-{num_shards:05d}")


class BundleReader:
    """Reads the tensors of the checkpoint with prefix `prefix` (`<prefix>.index` must exist).

        reader = BundleReader("chinese_roformer-v2-char_L-12_H-768_A-12/bert_model.ckpt")
        reader.keys()                     # tensor names, sorted
        reader.entry(name).shape          # without reading data
        array = reader.read(name)         # numpy array; CRC checked
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = Path(prefix)
        self.index_file = index_path(prefix)
        if not self.index_file.is_file():
            raise FileNotFoundError(f"no TensorFlow checkpoint index at {self.index_file}")
        label = str(self.index_file)
        items = read_table(self.index_file)
        if not items or items[0][0] != HEADER_KEY:
            raise BundleError(f"{label} has no bundle header entry: not a tensor-bundle checkpoint "
                              "(V1 checkpoints are not supported; re-save with TensorFlow ≥ 1.0)")
        self.num_shards, self.endianness = 1, LITTLE
        producer, min_consumer, bad_consumers = 0, 0, []
        for number, _, value in _proto_fields(items[0][1], f"{label} header"):
            if number == 1:
                self.num_shards = value
            elif number == 2:
                self.endianness = value
            elif number == 3:
                for vnumber, _, vvalue in _proto_fields(value, f"{label} header version"):
                    if vnumber == 1:
                        producer = vvalue
                    elif vnumber == 2:
                        min_consumer = vvalue
                    elif vnumber == 3:
                        bad_consumers.append(vvalue)
        if min_consumer > BUNDLE_VERSION or BUNDLE_VERSION in bad_consumers:
            raise UnsupportedBundleError(f"{label} needs a newer checkpoint reader (producer {producer}, "
                                         f"min_consumer {min_consumer}); read it with TensorFlow")
        if self.endianness not in (LITTLE, BIG) or self.num_shards < 1:
            raise BundleError(f"{label} has an invalid header (endianness {self.endianness}, {self.num_shards} shards)")
        self._entries: dict[str, BundleEntry] = {}
        for key, value in items[1:]:
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError as error:
                raise BundleError(f"{label} has a tensor name that is not UTF-8: {key!r}") from error
            entry = _parse_entry(name, value, f"{label} entry {name!r}")
            if not entry.sliced and entry.shard_id >= self.num_shards:
                raise BundleError(f"{label}: {name!r} is in shard {entry.shard_id} of {self.num_shards}")
            self._entries[name] = entry

    def keys(self) -> list[str]:
        """Names of the full tensors (slice entries of partitioned variables are not listed)."""
        return [name for name in self._entries if not _is_slice_key(name)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, name: str) -> BundleEntry:
        if name not in self._entries:
            raise KeyError(f"{name!r} is not in the checkpoint {self.prefix}")
        return self._entries[name]

    def read(self, name: str) -> np.ndarray:
        """The tensor `name` as a numpy array (bfloat16 widened exactly to float32, strings as bytes)."""
        entry = self.entry(name)
        if entry.sliced:
            raise UnsupportedBundleError(f"{name!r} in {self.index_file} is a partitioned variable (saved in "
                                         "slices); read it with TensorFlow (reader='tensorflow')")
        shard = data_path(self.prefix, entry.shard_id, self.num_shards)
        if not shard.is_file():
            raise FileNotFoundError(f"checkpoint data shard missing: {shard} (needed for {name!r})")
        with open(shard, "rb") as handle:
            handle.seek(entry.offset)
            raw = handle.read(entry.size)
        if len(raw) != entry.size:
            raise BundleError(f"{shard} is truncated: {name!r} needs bytes [{entry.offset}, "
                              f"{entry.offset + entry.size}) but the file has {shard.stat().st_size} bytes")
        count = int(np.prod(entry.shape, dtype=np.int64))
        if entry.dtype == DT_STRING:
            return self._read_strings(entry, raw, count, shard)
        if unmask_crc(entry.crc32c) != crc32c(raw):
            raise BundleError(f"{shard} is corrupt: the CRC of {name!r} does not match its data")
        if entry.dtype == DT_BFLOAT16:
            if entry.size != 2 * count:
                raise BundleError(f"{self.index_file}: {name!r} has {entry.size} bytes, expected {2 * count}")
            order = "<" if self.endianness == LITTLE else ">"
            bits = np.frombuffer(raw, dtype=np.dtype(f"{order}u2")).astype(np.uint32) << np.uint32(16)
            return bits.view(np.float32).reshape(entry.shape)
        if entry.dtype not in NUMPY_DTYPES:
            raise UnsupportedBundleError(f"{name!r} in {self.index_file} has dtype {entry.dtype_name}, "
                                         "which this reader does not decode")
        dtype = NUMPY_DTYPES[entry.dtype].newbyteorder("<" if self.endianness == LITTLE else ">")
        if entry.size != dtype.itemsize * count:
            raise BundleError(f"{self.index_file} is corrupt: {name!r} has {entry.size} bytes for shape "
                              f"{list(entry.shape)} of {entry.dtype_name} ({dtype.itemsize * count} expected)")
        return np.frombuffer(raw, dtype=dtype).reshape(entry.shape).astype(dtype.newbyteorder("="))

    def _read_strings(self, entry: BundleEntry, raw: bytes, count: int, shard: Path) -> np.ndarray:
        """[varint64 length]×N, masked CRC of the lengths, then the bytes (tensor_bundle.cc)."""
        what = f"{shard} string tensor {entry.name!r}"
        order = "little" if self.endianness == LITTLE else "big"
        lengths, pos, crc = [], 0, 0
        for _ in range(count):
            length, pos = _read_varint(raw, pos, len(raw), what)
            lengths.append(length)
            crc = crc32c(length.to_bytes(4 if length <= 0xFFFFFFFF else 8, order), crc)
        if pos + 4 > len(raw):
            raise BundleError(f"{what} is truncated")
        stored = int.from_bytes(raw[pos:pos + 4], order)
        if unmask_crc(stored) != crc:
            raise BundleError(f"{what} is corrupt: the CRC of its lengths does not match")
        crc = crc32c(raw[pos:pos + 4], crc)
        pos += 4
        values = []
        for length in lengths:
            if pos + length > len(raw):
                raise BundleError(f"{what} is truncated")
            values.append(raw[pos:pos + length])
            crc = crc32c(raw[pos:pos + length], crc)
            pos += length
        if unmask_crc(entry.crc32c) != crc:
            raise BundleError(f"{what} is corrupt: its CRC does not match")
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(entry.shape)


def _is_slice_key(name: str) -> bool:
    # checkpoint::EncodeTensorNameSlice keys start with a NUL byte (ordered code); plain names never do
    return name.startswith("\0")


def write_bundle(prefix: str | os.PathLike, tensors: Mapping[str, np.ndarray], block_size: int = 262144) -> None:
    """Write `tensors` as a one-shard tensor-bundle checkpoint at `prefix` (`.index` + `.data-…`).

    Data are laid out in sorted-name order, as TensorFlow's Saver adds them. Numeric numpy dtypes
    only (no strings). Both files are written to temporary names and renamed into place.
    """
    prefix = Path(prefix)
    names = sorted(tensors)
    data = bytearray()
    items = [(HEADER_KEY, _encode_header(1))]
    for name in names:
        array = np.asarray(tensors[name])
        if array.dtype not in TF_DTYPES:
            raise TypeError(f"write_bundle: {name!r} has dtype {array.dtype}, not a numeric TensorFlow dtype")
        raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        items.append((name.encode("utf-8"),
                      _encode_entry(TF_DTYPES[array.dtype], tuple(array.shape), len(data), len(raw), mask_crc(crc32c(raw)))))
        data += raw
    table = build_table(items, block_size=block_size)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for target, payload in ((data_path(prefix, 0, 1), bytes(data)), (index_path(prefix), table)):
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
        os.replace(temporary, target)
