"""vgg_jax: VGG (Simonyan & Zisserman, ICLR 2015) in JAX, from Table 1 to transfer learning.

The short public API, imported lazily (`import vgg_jax` imports no TensorFlow, nor JAX
until a name is used):
  vgg_jax.VGG                  the net of Table 1 (vgg_jax.models)
  vgg_jax.load(name_or_path)   (model, variables, mean_rgb) of named weights, a file or a run
  vgg_jax.extract(...)         named activations (vgg_jax.features)
  vgg_jax.lpips.load()         the LPIPS metric
  vgg_jax.dists.load()         the DISTS metric
The folders: models/ (the net), data/ (the input pipeline), training/ (the loop),
evaluation/ (the paper's protocols, prediction, reports), pretrained/ (named weights and
foreign files); checkpointing, sharding, features and the perceptual metrics (lpips,
dists and what they share, perceptual) serve several; errors (the user errors), cli
(what every command shares: such an error as one line, a quiet start-up) and stderr (C++
libraries' known noise on file descriptor 2, filtered).
"""

import importlib

_EXPORTS = {'VGG': ('vgg_jax.models', 'VGG'), 'load': ('vgg_jax.pretrained', 'load'),
            'extract': ('vgg_jax.features', 'extract')}
_MODULES = ('models', 'pretrained', 'features', 'lpips', 'dists', 'perceptual', 'data',
            'training', 'evaluation', 'checkpointing', 'sharding')
__all__ = list(_EXPORTS) + list(_MODULES)


def __getattr__(name):
  if name in _EXPORTS:
    module, attribute = _EXPORTS[name]
    return getattr(importlib.import_module(module), attribute)
  if name in _MODULES:
    return importlib.import_module(f'vgg_jax.{name}')
  raise AttributeError(f'module vgg_jax has no attribute {name!r}')
