"""TORCH_CUDA_ARCH_LIST in the form DeepSpeed 0.19.8's op builder can parse.

Hopper and Blackwell images often set arch-specific entries such as `9.0a` or `10.0f`; DeepSpeed's
`compute_capability_args` reads the minor version with `int()` and dies with `invalid literal for
int() with base 10: '0a'` before it builds FusedLamb or FusedAdam. Its ops use no arch-specific
instructions, so the plain entry (`9.0`) builds the same kernels.
"""

from __future__ import annotations

import logging
import os
import re

from .errors import PretrainError

logger = logging.getLogger("pretrain")

VARIABLE = "TORCH_CUDA_ARCH_LIST"
_ENTRY = re.compile(r"^(\d+)\.(\d+)([af]?)(\+PTX)?$")


class CudaArchListError(PretrainError):
    """An entry of TORCH_CUDA_ARCH_LIST that neither DeepSpeed nor this module can read."""


def normalize_cuda_arch_list(environ=os.environ) -> str | None:
    """Rewrite `9.0a`-style entries of TORCH_CUDA_ARCH_LIST to `9.0` (keeping `+PTX`), in `environ`.

    Returns the value DeepSpeed will see (None when the variable is unset). An entry that is not
    `major.minor[a|f][+PTX]` raises CudaArchListError naming the variable, its value and the fix.
    """
    value = environ.get(VARIABLE)
    if value is None or not value.strip():
        return value
    entries = [entry for entry in re.split(r"[;\s]+", value.strip()) if entry]
    normalized = []
    for entry in entries:
        match = _ENTRY.match(entry)
        if match is None:
            raise CudaArchListError(
                f"{VARIABLE}={value!r}: cannot read the entry {entry!r}; DeepSpeed's op builder needs entries like "
                f"'8.0', '9.0' or '9.0+PTX'. Fix: export {VARIABLE}=\"9.0\" (your GPU's compute capability, see "
                "torch.cuda.get_device_capability()) or unset it"
            )
        major, minor, _suffix, ptx = match.groups()
        plain = f"{major}.{minor}{ptx or ''}"
        if plain not in normalized:
            normalized.append(plain)
    result = ";".join(normalized)
    if result != value:
        logger.warning("%s=%r rewritten to %r: DeepSpeed 0.19.8's op builder cannot parse arch-specific entries "
                       "such as '9.0a'", VARIABLE, value, result)
        environ[VARIABLE] = result
    return result
