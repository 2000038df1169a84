"""TensorFlow's tensor-bundle checkpoint format ("V2" checkpoints), read and written without TensorFlow.

A checkpoint with prefix P is two kinds of file (tensorflow/core/util/tensor_bundle):

    P.index                  an SSTable (the LevelDB table format, zoo/convert/sstable.py) mapping
                             keys to serialized protos:
                                 ""          → BundleHeaderProto {num_shards, endianness, version}
                                 tensor name → BundleEntryProto  {dtype, shape, shard_id, offset, size,
                                                                  crc32c, slices}
    P.data-<i>-of-<n>        the tensors' bytes, C order, at the entries' offsets

This module is the bundle on top of the table: the protos, and the tensors decoded from the data
shards. Everything checksummed is checked: every block's CRC (sstable.py) and every tensor's CRC
(masked CRC32C, as TensorFlow's `crc32c::Mask`). Corrupt or truncated files raise `BundleError`
naming the file and what is wrong; valid features this reader does not implement (snappy blocks,
partitioned variables, variant tensors) raise `UnsupportedBundleError`, so a caller can fall back to
TensorFlow's own reader.

`write_bundle` writes the same layout (TensorFlow's BundleWriter and TableBuilder byte for byte, for
the tensor kinds it supports), so tests can build checkpoints without TensorFlow.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .crc32c import crc32c, mask_crc, unmask_crc
from .sstable import BundleError, UnsupportedBundleError, build_table, encode_varint, read_table, read_varint

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


# ------------------------------------------------------------------------------------- protobuf


def _proto_fields(buf: bytes, what: str) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a serialized protobuf message (unknown fields kept)."""
    fields, pos, end = [], 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos, end, what)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos, end, what)
        elif wire == 1:
            if pos + 8 > end:
                raise BundleError(f"truncated fixed64 in {what}")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = read_varint(buf, pos, end, what)
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
    return encode_varint(number << 3 | wire) + payload


def _encode_message(number: int, body: bytes) -> bytes:
    return _encode_field(number, 2, encode_varint(len(body)) + body)


def _encode_entry(dtype: int, shape: tuple[int, ...], offset: int, size: int, crc: int) -> bytes:
    """BundleEntryProto as protobuf serializes it: fields in number order, proto3 defaults omitted,
    the shape message always present (TensorFlow sets it even for scalars)."""
    dims = b"".join(_encode_message(2, _encode_field(1, 0, encode_varint(d)) if d else b"") for d in shape)
    out = _encode_field(1, 0, encode_varint(dtype)) + _encode_message(2, dims)
    if offset:
        out += _encode_field(4, 0, encode_varint(offset))
    if size:
        out += _encode_field(5, 0, encode_varint(size))
    return out + _encode_field(6, 5, struct.pack("<I", crc))


def _encode_header(num_shards: int) -> bytes:
    version = _encode_field(1, 0, encode_varint(BUNDLE_VERSION))  # VersionDef{producer}, min_consumer 0 omitted
    return _encode_field(1, 0, encode_varint(num_shards)) + _encode_message(3, version)

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
            length, pos = read_varint(raw, pos, len(raw), what)
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


__all__ = ["BundleEntry", "BundleError", "BundleReader", "UnsupportedBundleError", "data_path", "index_path", "write_bundle"]
