"""Pretrained VGG weights: by name (downloaded, verified, cached), or imported from a file.

  loader          load(name | file | DIR), the one loader, and the cache of conversions
  named_weights   the registry of published files: URL, hash, size, accuracy, convention
  download        fetching a named file once into the cache: bounded, resumable, verified
  torch_files     .pth files (zip and legacy) read without torch, as untrusted input
  weight_readers  Keras .h5, torchvision / timm state dicts and .safetensors -> our layers
  convert         a weights file -> an Orbax checkpoint, its input convention folded in
  untrusted       the one refusal (WeightsFileError) and names vs paths (docs/security.md)
  __main__        the command line:

  python -m vgg_jax.pretrained --list                    # the named weights, and what is cached
  python -m vgg_jax.pretrained --fetch=vgg16             # download and convert once
  python -m vgg_jax.pretrained --source=keras|torchvision|timm --weights=FILE \\
      --variant=D|E|A|B --out=DIR                         # import a file you have

`pretrained.load(...)`, `pretrained.import_weights(...)` and the other names below are
the loader's and the import's, resolved on first use: the readers (torch_files,
weight_readers) import without JAX or Orbax.
"""

import importlib

_FROM = {
    'loader': ('CONVERSION_FORMAT', 'cached_names', 'decode', 'fetch', 'is_cached', 'load',
               'load_checkpoint', 'resolve', 'run_mean_rgb'),
    'convert': ('CONVENTIONS', 'KERAS_MEAN_BGR', 'SOURCES', 'TORCH_MEAN', 'TORCH_STD', 'build',
                'import_weights', 'mean_rgb_of', 'preprocessing', 'write_checkpoint'),
}
_EXPORTS = {name: module for module, names in _FROM.items() for name in names}
__all__ = list(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f'vgg_jax.pretrained.{_EXPORTS[name]}'), name)
  raise AttributeError(f'module vgg_jax.pretrained has no attribute {name!r}')
