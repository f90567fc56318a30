"""Keep freed host memory in the process, so XLA's per-step CPU buffers cost no page faults.

XLA's CPU runtime allocates each step's temporary buffers afresh (posix_memalign on a
worker thread). glibc serves such large blocks with mmap and gives them back on free,
so every step touches hundreds of MB of new pages: VGG-A at 32x32, batch 64, faults in
~69k pages (280 MB) per step, at 224x224 batch 4 ~510k (2.1 GB). reuse_freed_memory()
tells glibc to serve all threads from the main heap, never mmap, and never trim it, so
the same memory is reused from step to step. Measured (docs/performance.md): VGG-A
train step 0.37 -> 0.32 s at 32x32 b64 and 1.16 -> 0.99 s at 224x224 b4; PyTorch in
the same process gains too (it allocates the same way).

The cost: the process keeps its peak heap until it exits, and all threads share one
malloc arena. Call it first thing in a program's main(), before JAX or TensorFlow start
their threads (a thread keeps the arena it first used). A no-op off Linux/glibc, and
when MALLOC_ARENA_MAX is set (the user tuned malloc already).
"""

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameters, <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def reuse_freed_memory() -> bool:
  """Apply the glibc settings above; True if they took effect."""
  if not sys.platform.startswith('linux') or 'MALLOC_ARENA_MAX' in os.environ:
    return False
  name = ctypes.util.find_library('c')
  if not name:
    return False
  try:
    mallopt = ctypes.CDLL(name).mallopt
  except (OSError, AttributeError):  # Not glibc (musl has no mallopt).
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
