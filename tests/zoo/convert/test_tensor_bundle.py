"""The pure-Python tensor-bundle reader and writer, against TensorFlow-written files and known CRCs."""

import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from zoo.convert import crc32c as crc
from zoo.convert import sstable
from zoo.convert import tensor_bundle as tb
from zoo.convert.tf_checkpoint import find_checkpoint_prefix, open_tf_checkpoint

from .source_checkpoints import DIMS, FIXTURE_SEED, bert4keras_variables

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_FOLDERS = {"roformer-v2": FIXTURES / "roformer_v2_tf", "gau-alpha": FIXTURES / "gau_alpha_tf"}


def test_crc32c_matches_published_check_values():
    # the CRC-32C check value and the iSCSI vectors of RFC 3720 B.4
    assert crc.crc32c(b"123456789") == 0xE3069283
    assert crc.crc32c(b"") == 0
    assert crc.crc32c(bytes(32)) == 0x8A9136AA
    assert crc.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc.crc32c(bytes(range(32))) == 0x46DD794E


def test_vectorised_crc32c_equals_the_bytewise_one_and_extends():
    data = np.random.RandomState(0).randint(0, 256, size=300_001, dtype=np.uint8).tobytes()  # 73 lanes + a tail
    bytewise = crc._register_update(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    assert crc.crc32c(data) == bytewise
    split = 123_457
    assert crc.crc32c(data[split:], crc.crc32c(data[:split])) == bytewise
    assert crc.unmask_crc(crc.mask_crc(bytewise)) == bytewise and crc.mask_crc(bytewise) != bytewise


@pytest.mark.parametrize("family", list(FIXTURE_FOLDERS))
def test_reads_checkpoints_tensorflow_wrote(family):
    """fixtures/ hold checkpoints saved by TensorFlow 2.21's tf.compat.v1 Saver (make_tf_fixtures.py)."""
    reader = tb.BundleReader(FIXTURE_FOLDERS[family] / "bert_model.ckpt")
    expected = bert4keras_variables(family, DIMS[family], FIXTURE_SEED[family])
    assert sorted(reader.keys()) == sorted([*expected, "global_step"])
    for name, value in expected.items():
        array = reader.read(name)
        assert array.dtype == np.float32 and array.shape == value.shape
        assert np.array_equal(array, value), name
    step = reader.read("global_step")
    assert step.dtype == np.int64 and step.shape == () and int(step) == 1000


@pytest.mark.parametrize("family", list(FIXTURE_FOLDERS))
def test_writer_reproduces_tensorflow_bytes(tmp_path, family):
    variables = bert4keras_variables(family, DIMS[family], FIXTURE_SEED[family])
    tb.write_bundle(tmp_path / "model.ckpt", {**variables, "global_step": np.int64(1000)})
    theirs = FIXTURE_FOLDERS[family] / "bert_model.ckpt"
    for suffix in (".index", ".data-00000-of-00001"):
        assert (tmp_path / f"model.ckpt{suffix}").read_bytes() == Path(f"{theirs}{suffix}").read_bytes(), suffix


def test_round_trip_of_dtypes_shapes_and_many_blocks(tmp_path):
    rng = np.random.RandomState(3)
    tensors = {
        "float16": rng.standard_normal((3, 5)).astype(np.float16),
        "float64/scalar": np.float64(-2.5),
        "int8": rng.randint(-128, 127, size=(7,)).astype(np.int8),
        "bool": rng.rand(4, 2) > 0.5,
        "uint64": np.array([2**64 - 1, 3], dtype=np.uint64),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    tensors.update({f"layer_{i:03d}/kernel": rng.standard_normal((2, 3)).astype(np.float32) for i in range(60)})
    tb.write_bundle(tmp_path / "one_block", tensors)
    tb.write_bundle(tmp_path / "many_blocks", tensors, block_size=64)  # ~1 entry per data block
    assert (tmp_path / "many_blocks.index").stat().st_size > (tmp_path / "one_block.index").stat().st_size
    for prefix in ("one_block", "many_blocks"):
        reader = tb.BundleReader(tmp_path / prefix)
        assert reader.keys() == sorted(tensors)
        for name, value in tensors.items():
            array = reader.read(name)
            assert array.dtype == value.dtype and array.shape == np.shape(value) and np.array_equal(array, value), name


def _bundle(tmp_path) -> Path:
    prefix = tmp_path / "model.ckpt"
    tb.write_bundle(prefix, {"a/kernel": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.float32)})
    return prefix


def test_truncated_or_foreign_index_is_named(tmp_path):
    prefix = _bundle(tmp_path)
    index = tb.index_path(prefix)
    index.write_bytes(index.read_bytes()[:-7])
    with pytest.raises(tb.BundleError, match=r"model\.ckpt\.index is truncated or not a TensorFlow checkpoint index"):
        tb.BundleReader(prefix)
    index.write_bytes(b"not a checkpoint")
    with pytest.raises(tb.BundleError, match="shorter than the 48-byte table footer"):
        tb.BundleReader(prefix)


def test_corrupt_index_block_fails_its_crc(tmp_path):
    prefix = _bundle(tmp_path)
    index = tb.index_path(prefix)
    data = bytearray(index.read_bytes())
    data[5] ^= 0x01  # inside the first data block
    index.write_bytes(bytes(data))
    with pytest.raises(tb.BundleError, match="corrupt: CRC mismatch in the data block 0"):
        tb.BundleReader(prefix)


def test_truncated_and_corrupt_data_shard_are_named(tmp_path):
    prefix = _bundle(tmp_path)
    shard = tb.data_path(prefix, 0, 1)
    good = shard.read_bytes()
    shard.write_bytes(good[:50])
    reader = tb.BundleReader(prefix)
    with pytest.raises(tb.BundleError, match=r"data-00000-of-00001 is truncated: 'b' needs bytes \[48, 68\)"):
        reader.read("b")
    assert reader.read("a/kernel").shape == (3, 4)  # the tensor before the cut is intact
    shard.write_bytes(good[:60] + bytes([good[60] ^ 0x10]) + good[61:])
    with pytest.raises(tb.BundleError, match="corrupt: the CRC of 'b' does not match"):
        tb.BundleReader(prefix).read("b")
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="checkpoint data shard missing: .*data-00000-of-00001"):
        tb.BundleReader(prefix).read("b")


def _first_data_block(table: bytes) -> tuple[int, int]:
    """(offset, size) of data block 0, read from the footer's index handle."""
    footer = table[-sstable.FOOTER_SIZE:]
    _, _, pos = sstable._decode_handle(footer, 0, "table")
    index_offset, index_size, _ = sstable._decode_handle(footer, pos, "table")
    index = sstable._block_entries(memoryview(table)[index_offset:index_offset + index_size], "table", "index")
    offset, size, _ = sstable._decode_handle(index[0][1], 0, "table")
    return offset, size


def test_snappy_blocks_are_reported_as_unsupported(tmp_path):
    table = bytearray(sstable.build_table([(b"", b"header"), (b"x", b"value")]))
    offset, size = _first_data_block(bytes(table))
    end = offset + size
    table[end] = sstable.SNAPPY_COMPRESSION  # a valid trailer for a snappy block: type byte + its masked CRC
    table[end + 1:end + 5] = struct.pack("<I", crc.mask_crc(crc.crc32c(bytes(table[end:end + 1]), crc.crc32c(bytes(table[offset:end])))))
    path = tmp_path / "snappy.index"
    path.write_bytes(bytes(table))
    with pytest.raises(tb.UnsupportedBundleError, match="snappy-compressed blocks"):
        sstable.read_table(path)


def test_finding_the_prefix(tmp_path):
    prefix = _bundle(tmp_path / "release")
    assert find_checkpoint_prefix(tmp_path / "release") == prefix
    assert find_checkpoint_prefix(tb.index_path(prefix)) == prefix
    assert find_checkpoint_prefix(tb.data_path(prefix, 0, 1)) == prefix
    # a `checkpoint` state file with the author's absolute path (common in released zips) is not trusted blindly
    (tmp_path / "release" / "checkpoint").write_text('model_checkpoint_path: "/home/someone/bert_model.ckpt"\n')
    assert find_checkpoint_prefix(tmp_path / "release") == prefix
    _bundle(tmp_path / "release" / "older")
    with pytest.raises(FileNotFoundError, match="holds 2 checkpoints"):
        find_checkpoint_prefix(tmp_path / "release")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no TensorFlow checkpoint \(\*\.index\) in .*empty"):
        find_checkpoint_prefix(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"no TensorFlow checkpoint at .*nothing-here"):
        find_checkpoint_prefix(tmp_path / "nothing-here")


def test_pure_reader_is_used_without_tensorflow(tmp_path):
    prefix = _bundle(tmp_path)
    tensors = open_tf_checkpoint(prefix, reader="pure")
    assert tensors.keys() == ["a/kernel", "b"] and tensors.shape("a/kernel") == (3, 4)
    assert tensors.get("a/kernel").tolist() == np.arange(12, dtype=np.float32).reshape(3, 4).tolist()
    with pytest.raises(ValueError, match="reader='fast' is not one of"):
        open_tf_checkpoint(prefix, reader="fast")


@pytest.mark.tensorflow
def test_tensorflow_reader_agrees_with_the_pure_one(tmp_path):
    """With the tensorflow extra (`python -m pytest -m tensorflow`); the fixtures above cover its format otherwise."""
    import tensorflow as tf
    rng = np.random.RandomState(4)
    big = rng.standard_normal((300, 257)).astype(np.float32)  # > 64 KiB: the vectorised CRC path
    checkpoint = tf.train.Checkpoint(v=tf.Variable(big), w=tf.Variable(tf.constant([1.5, -2.25], dtype=tf.bfloat16)))
    path = checkpoint.write(os.fspath(tmp_path / "tf2"))
    pure = tb.BundleReader(path)
    theirs = tf.train.load_checkpoint(path)
    assert sorted(pure.keys()) == sorted(theirs.get_variable_to_shape_map())
    assert pure.read("_CHECKPOINTABLE_OBJECT_GRAPH")[()] == theirs.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
    assert np.array_equal(pure.read("v/.ATTRIBUTES/VARIABLE_VALUE"), big)
    assert pure.read("w/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [1.5, -2.25]  # bfloat16 widened exactly
    tb.write_bundle(tmp_path / "ours", {"x": big})
    assert np.array_equal(tf.train.load_checkpoint(os.fspath(tmp_path / "ours")).get_tensor("x"), big)


def test_tensorflow_reader_without_tensorflow_says_how_to_get_it(tmp_path, monkeypatch):
    prefix = _bundle(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if not installed, also where it is
    with pytest.raises(ImportError, match=r"needs TensorFlow, which zoo does not depend on: pip install 'zoo-zh\[tensorflow\]'"):
        open_tf_checkpoint(prefix, reader="tensorflow")
    assert open_tf_checkpoint(prefix, reader="auto").keys() == ["a/kernel", "b"]  # auto needs no TensorFlow
