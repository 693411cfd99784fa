"""Keep freed host memory in the process for reuse, so that training on CPU does not page-fault.

glibc's ``malloc`` serves every block above its mmap threshold (128 KiB, rising to at most
32 MiB) with a fresh ``mmap`` and hands it back to the kernel on ``free``. A CycleGAN iteration at
256x256 allocates and frees hundreds of activation and gradient tensors of several to tens of MiB,
so each iteration touches new pages, and the kernel zeroes every page on its first touch. Serving large blocks from the heap and never trimming it lets
the next iteration reuse the same pages (almost no faults, the same peak memory; docs/library.md
has the measured effect on training time). PyTorch's CPU performance guide reaches the same end
by preloading jemalloc or tcmalloc; neither comes with a plain Python installation, whereas
``mallopt`` is part of glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger(__name__)

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# mallopt takes an int: the largest heap top that is never given back (2 GiB - 1).
_NEVER_TRIM = 2**31 - 1


@functools.lru_cache(maxsize=None)
def retain_freed_host_memory() -> bool:
    """Tell glibc to serve large blocks from the heap and keep freed memory (once per process).

    Process-wide and permanent: memory freed by the process stays mapped for its later allocations
    instead of going back to the system, which suits a training process that allocates the same
    sizes every iteration.

    Returns:
        True if the allocator was configured; False where the C library is not glibc (macOS,
        Windows, musl), which is left as it is.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
        gnu_get_libc_version = getattr(libc, "gnu_get_libc_version", None)
    except OSError:
        mallopt = gnu_get_libc_version = None
    if mallopt is None or gnu_get_libc_version is None:
        logger.debug("not glibc: host allocator left as it is")
        return False
    configured = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    if not configured:
        logger.warning("mallopt refused the settings: host allocator left as it is")
    return configured
