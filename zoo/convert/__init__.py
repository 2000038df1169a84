"""Readers for the officially released RoFormerV2 / GAU-α checkpoints, and export back to the ports.

    from zoo.convert import convert_checkpoint, export_junnyu

    result = convert_checkpoint("chinese_GAU-alpha-char_L-24_H-768.zip", source="bert4keras",
                                out="converted/gau-alpha-base")       # or publish="gau-alpha-base-zh@mine"
    export_junnyu(result.model, "ports/gau-alpha-base", tokenizer=result.tokenizer)

Formats: "bert4keras" (Zhuiyi's TensorFlow checkpoints, read without TensorFlow), "junnyu" and
"bert4torch" (community PyTorch ports). Released names (`RELEASES`) install themselves on first
`zoo.from_pretrained(name)`. Shell: `python -m zoo convert`, `python -m zoo export-junnyu`,
`python -m zoo releases`.
"""

from .conversion import CONVERSION_RECORD, SOURCES, ConversionResult, convert_checkpoint
from .install import downloads_dir, install_release
from .junnyu import export_junnyu
from .mapping import ConversionError
from .releases import RELEASES, Release
from .tensor_bundle import BundleError, BundleReader, write_bundle

__all__ = [
    "BundleError",
    "BundleReader",
    "CONVERSION_RECORD",
    "ConversionError",
    "ConversionResult",
    "RELEASES",
    "Release",
    "SOURCES",
    "convert_checkpoint",
    "downloads_dir",
    "export_junnyu",
    "install_release",
    "write_bundle",
]
