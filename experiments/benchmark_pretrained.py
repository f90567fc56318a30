"""Times pretrained.load by name: the first load (download, hash, convert) and a cached one.

  python -m experiments.benchmark_pretrained [--variant=D] [--legacy_pth]

Writes a full-size random VGG in torchvision's layout (a .pth when torch is installed, in
the legacy format of torchvision's own VGG files with --legacy_pth, else .safetensors),
serves it from 127.0.0.1 as VGG_JAX_MIRROR, puts a table entry with its sha256 in
named_weights.WEIGHTS and loads it twice into a fresh cache, then loads the file itself
(pretrained.load(path): read and converted in memory, nothing cached). Prints seconds.
"""

import functools
import http.server
import os
import tempfile
import threading
import time

from absl import flags
import numpy as np

from vgg_jax import cli
from vgg_jax import models
from vgg_jax import pretrained
from vgg_jax.pretrained import download
from vgg_jax.pretrained import named_weights

_VARIANT = flags.DEFINE_enum('variant', 'D', ['A', 'B', 'D', 'E'], 'Which VGG to write.')
_LEGACY = flags.DEFINE_bool('legacy_pth', True, "torch's legacy .pth format (as torchvision's "
                            'VGG files), else its zip format; needs torch.')


def torchvision_state(variant: str) -> dict[str, np.ndarray]:
  """Random float32 arrays under torchvision's keys for a full-size VGG `variant`."""
  rng = np.random.default_rng(0)
  state, index, channels = {}, 0, 3
  for stage, out in zip(models.CONFIGS[variant], models.STAGE_CHANNELS):
    for _ in stage:
      state[f'features.{index}.weight'] = rng.standard_normal(
          (out, channels, 3, 3), np.float32) * 0.01
      state[f'features.{index}.bias'] = np.zeros(out, np.float32)
      channels, index = out, index + 2
    index += 1  # The pool.
  for j, (fan_in, out) in zip((0, 3, 6), ((512 * 49, 4096), (4096, 4096), (4096, 1000))):
    state[f'classifier.{j}.weight'] = rng.standard_normal((out, fan_in), np.float32) * 0.01
    state[f'classifier.{j}.bias'] = np.zeros(out, np.float32)
  return state


def write_file(state, directory: str, legacy: bool) -> str:
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional: the .pth writer)
  except ImportError:
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    path = os.path.join(directory, 'vgg_bench-00000000.safetensors')
    safetensors_numpy.save_file(state, path)
    return path
  path = os.path.join(directory, 'vgg_bench-00000000.pth')
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path,
             _use_new_zipfile_serialization=not legacy)
  return path


class QuietHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, *args):
    pass


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as root:
    served = os.path.join(root, 'served')
    os.makedirs(served)
    start = time.perf_counter()
    path = write_file(torchvision_state(_VARIANT.value), served, _LEGACY.value)
    size = os.path.getsize(path)
    print(f'wrote {os.path.basename(path)}: {size / 1e6:.1f} MB in '
          f'{time.perf_counter() - start:.1f} s')
    sha256 = download.digest(path, 'sha256')
    name = 'vgg_bench'
    named_weights.WEIGHTS[name] = named_weights.Weights(
        name, 'torchvision', f'https://example.invalid/{os.path.basename(path)}', 'sha256',
        sha256, _VARIANT.value, False, True, 0, None, None, named_weights.TORCH_IMAGENET,
        'benchmark', size / 2**20, size)
    handler = functools.partial(QuietHandler, directory=served)
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ[named_weights.MIRROR_ENV] = f'http://127.0.0.1:{server.server_address[1]}'
    os.environ[named_weights.CACHE_ENV] = os.path.join(root, 'cache')
    for label in ('first load (download, sha256, convert, read)', 'cached load'):
      start = time.perf_counter()
      _, variables, _ = pretrained.load(name)
      seconds = time.perf_counter() - start
      params = models.count_params(variables['params'])
      print(f'{label}: {seconds:.2f} s ({params:,} parameters)')
    start = time.perf_counter()
    pretrained.load(path)
    print(f'the file itself, read and converted in memory: {time.perf_counter() - start:.2f} s')
    server.shutdown()


if __name__ == '__main__':
  cli.run(main)
