"""Keep freed host memory in the process, so XLA's per-step CPU buffers cost no page faults.

XLA's CPU runtime allocates each step's temporary buffers afresh (posix_memalign on a
worker thread). glibc serves such large blocks with mmap and gives them back on free,
so every step touches hundreds of MB of new pages. reuse_freed_memory() tells glibc to
serve all threads from the main heap, never mmap, and never trim it, so the same memory
is reused from step to step (docs/performance.md has the page faults and step times).

The costs: the process keeps its peak heap until it exits, and all threads share one
malloc arena, so malloc-heavy threads contend: XLA compiles and tf.data decodes more
slowly. So it is only applied where JAX will compute on the CPU (no GPU/TPU plugin
installed, or JAX_PLATFORMS=cpu): long CPU runs gain, accelerator hosts keep glibc's
defaults, and short compile-bound runs (tests, a --quick ablation) are better off
without it.

Call it first thing in a program's main(), before JAX or TensorFlow start threads (a
thread keeps the arena it first used). A no-op off Linux/glibc, and when
MALLOC_ARENA_MAX is set (the user tuned malloc already).
"""

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import sys

from absl import flags

# glibc's mallopt parameters, <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# Trim threshold -1: never (glibc reads it as SIZE_MAX). A positive threshold, even the
# largest, 2**31 - 1, still trims a freed heap top over 2 GiB, which VGG's 224x224 steps reach.
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))

# Defined here once for every program that calls reuse_freed_memory (launch.py, the
# benchmarks, the ablation); each adopts it with flags.adopt_module_key_flags, so --help
# lists it.
REUSE_HOST_MEMORY = flags.DEFINE_bool(
    'reuse_host_memory', True,
    'Where JAX computes on the CPU, keep freed host memory for reuse (glibc; the whole '
    'process, torch included): faster CPU steps, slower compiles; see '
    'vgg_jax/training/host_memory.py and docs/performance.md.')


def accelerator_plugins() -> list[str]:
  """The JAX GPU/TPU plugins installed here (found without importing JAX)."""
  found = [entry.name for entry in importlib.metadata.entry_points(group='jax_plugins')]
  for module in ('jax_plugins', 'libtpu', 'jax_cuda12_plugin', 'jax_cuda13_plugin',
                 'jax_rocm60_plugin', 'jax_rocm7_plugin'):
    if importlib.util.find_spec(module) is not None:
      found.append(module)
  return found


def jax_runs_on_cpu() -> bool:
  """Whether JAX will compute on the CPU: JAX_PLATFORMS says so, or no plugin is here."""
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  return not accelerator_plugins()


def reuse_freed_memory(force: bool = False) -> bool:
  """Apply the glibc settings above where JAX runs on the CPU (always with force=True).

  Returns True if they took effect.
  """
  if not sys.platform.startswith('linux') or 'MALLOC_ARENA_MAX' in os.environ:
    return False
  if not (force or jax_runs_on_cpu()):
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
