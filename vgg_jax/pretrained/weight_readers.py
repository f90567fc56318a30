"""Reads VGG weight files (Keras .h5, torchvision and timm state dicts) into our layout.

Each reader returns {'params': {layer: {name: array}}}, plus 'batch_stats' for the
batch-norm VGGs (vgg*_bn), under our layer names (conv1_1, bn1_1, ..., fc6, fc7, fc8):
kernels HWIO, fc6's kernel [window*window*C, out] in H,W,C flatten order, BatchNorm's
weight/bias/running_mean/running_var as scale/bias (params) and mean/var (batch_stats).
The arrays still expect the source's own input convention; vgg_jax.pretrained folds it
into conv1_1. h5py and safetensors are optional dependencies (the `pretrained` extra),
imported only by the reader that needs them; vgg_jax.pretrained.torch_files reads .pth files,
without torch.
"""

from typing import Any

import numpy as np

from vgg_jax import models
from vgg_jax.pretrained import torch_files
from vgg_jax.pretrained import untrusted

# Conv layers per variant, in order, as torchvision's and timm's vgg11/13/16/19 hold them.
TORCH_NAMES = {'A': 'vgg11', 'B': 'vgg13', 'D': 'vgg16', 'E': 'vgg19'}
# fc6, fc7, fc8 in each torch layout. timm stores fc6/fc7 as 7x7 and 1x1 convs.
TORCH_HEADS = {'torchvision': ('classifier.0', 'classifier.3', 'classifier.6'),
               'timm': ('pre_logits.fc1', 'pre_logits.fc2', 'head.fc')}
BN_KEYS = ('weight', 'bias', 'running_mean', 'running_var')  # num_batches_tracked: unused.


def conv_names(variant: str) -> list[str]:
  return [n for n in models.layer_names(variant) if n.startswith('conv')]


def variant_with_convs(count: int) -> str:
  by_count = {len(conv_names(v)): v for v in ('A', 'B', 'D', 'E')}
  return by_count.get(count, f'none of A/B/D/E ({count} conv layers)')


def keras_conv_layers(layers) -> list[str]:
  """The conv layers (block1_conv1, ...) of a Keras file's layer names."""
  return [n for n in layers if n.startswith('block') and '_conv' in n]


def torch_conv_ids(state) -> list[int]:
  """The N of every conv kernel features.N.weight of a torch state dict, ascending."""
  return sorted({int(k.split('.')[1]) for k, v in state.items()
                 if k.startswith('features.') and k.endswith('.weight') and v.ndim == 4})


def as_float32(tree):
  """Contiguous float32 copies of every array of {layer: {name: array}}."""
  return {layer: {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}
          for layer, arrays in tree.items()}


def keras_layer_names(variant: str) -> dict[str, str]:
  """Our conv3_2 / fc6 -> Keras's block3_conv2 / fc1, for every weight layer of variant."""
  names, count = {'fc6': 'fc1', 'fc7': 'fc2', 'fc8': 'predictions'}, {}
  for layer in models.layer_table(variant):
    if layer.kind == 'conv':
      count[layer.stage] = count.get(layer.stage, 0) + 1
      names[layer.name] = f'block{layer.stage}_conv{count[layer.stage]}'
  return names


MAX_H5_INFLATION = 16  # A dataset may declare 16x the bytes it stores (+ 1 MiB).
H5_SLACK = 1 << 20


def _h5_child(group, name: str, kind, path: str):
  """group[name], refused unless it is a hard link to a `kind` (no soft or external link)."""
  # Optional: the `pretrained` extra.
  import h5py  # pylint: disable=g-import-not-at-top
  link = group.get(name, getlink=True)
  where = f'{group.name.rstrip("/")}/{untrusted.short(name)}'
  if not isinstance(link, h5py.HardLink):
    raise untrusted.WeightsFileError(f'{path}: {where} is a link ({type(link).__name__}), not an '
                                     'object of the file: refused.')
  child = group[name]
  if not isinstance(child, kind):
    raise untrusted.WeightsFileError(f'{path}: {where} is not a {kind.__name__}.')
  if kind is h5py.Dataset:
    if child.is_virtual or child.external:
      raise untrusted.WeightsFileError(f'{path}: {where} keeps its data outside the file '
                                       '(virtual or external storage): refused.')
    if child.dtype.kind != 'f' or child.ndim > 4:
      raise untrusted.WeightsFileError(f'{path}: {where} is {child.dtype} of rank '
                                       f'{child.ndim}, not a float weight array.')
  return child


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _keras_datasets(f, path: str) -> dict:
  """Keras layer name -> [h5py.Dataset] of either .h5 layout; no data read yet."""
  import h5py  # pylint: disable=g-import-not-at-top
  layers = {}
  if 'layers' in f:  # Keras 3 .weights.h5: layers/<class key>/vars/{0,1}, name in attrs.
    group = _h5_child(f, 'layers', h5py.Group, path)
    for key in group:
      if 'vars' not in group[key]:
        continue
      vars_group = _h5_child(_h5_child(group, key, h5py.Group, path), 'vars', h5py.Group, path)
      if len(vars_group):
        name = _text(vars_group.attrs.get('name', key))
        layers[name] = [_h5_child(vars_group, str(i), h5py.Dataset, path)
                        for i in range(len(vars_group))]
  else:  # Classic layout: attrs layer_names, each group's attrs weight_names.
    root = _h5_child(f, 'model_weights', h5py.Group, path) if 'model_weights' in f else f
    if 'layer_names' not in root.attrs:
      raise untrusted.WeightsFileError(
          f'{path} is neither a Keras 3 .weights.h5 nor a classic Keras weights file (no '
          'layers/ group, no layer_names attribute).')
    for name in root.attrs['layer_names']:
      group = _h5_child(root, _text(name), h5py.Group, path)
      weight_names = [_text(w) for w in group.attrs.get('weight_names', [])]
      if weight_names:
        layers[_text(name)] = [_h5_child(group, w, h5py.Dataset, path) for w in weight_names]
  return layers


def expected_keras_shapes(variant: str, layers: dict) -> dict[str, list[tuple]]:
  """Keras layer -> the [kernel, bias] shapes VGG `variant` needs (the head's from fc1)."""
  shapes, channels = {}, 3
  keras_names = keras_layer_names(variant)
  for layer in models.layer_table(variant):
    if layer.kind == 'conv':
      k = layer.kernel_size
      shapes[keras_names[layer.name]] = [(k, k, channels, layer.features), (layer.features,)]
      channels = layer.features
  if keras_has_top(layers):
    fc1, fc2, top = (layers[n][0].shape for n in ('fc1', 'fc2', 'predictions'))
    width = fc1[-1] if len(fc1) == 2 and fc1[0] % channels == 0 else -1
    classes = top[-1] if len(top) == 2 else -1
    shapes['fc1'] = [(fc1[0] if width > 0 else -1, width), (width,)]
    shapes['fc2'] = [(width, width), (width,)]
    shapes['predictions'] = [(width, classes), (classes,)]
  return shapes


def keras_has_top(layers) -> bool:
  """Whether a Keras file's layers include fc1, fc2 and predictions (not a "notop" file)."""
  return all(n in layers for n in ('fc1', 'fc2', 'predictions'))


def read_keras_h5(path: str) -> dict[str, list[np.ndarray]]:
  """Keras layer name -> [kernel, bias], from either .h5 layout, of a VGG-11/13/16/19.

  The file is untrusted: only hard-linked float datasets stored inside the file are
  read, their shapes are checked against the variant's layers (found by the conv count)
  and their declared sizes against what the file stores before any data is read.
  """
  # Optional: the `pretrained` extra.
  import h5py  # pylint: disable=g-import-not-at-top
  try:
    f = h5py.File(path, 'r')
  except OSError as error:
    raise untrusted.WeightsFileError(f'{path} is not a readable HDF5 file (truncated or '
                                     f'corrupt?): {error}') from error
  try:
    with f:
      datasets = _keras_datasets(f, path)
      variant = variant_of(len(keras_conv_layers(datasets)), path)
      expected = expected_keras_shapes(variant, datasets)
      for name, shapes in expected.items():
        got = [tuple(d.shape) for d in datasets.get(name, [])]
        if got != shapes:
          raise untrusted.WeightsFileError(
              f'{path}: layer {name} holds arrays of shapes {got}; VGG variant {variant} '
              f'needs {shapes}.')
        for dataset in datasets[name]:
          declared = dataset.size * dataset.dtype.itemsize
          if declared > MAX_H5_INFLATION * dataset.id.get_storage_size() + H5_SLACK:
            raise untrusted.WeightsFileError(
                f'{path}: {dataset.name} declares {declared:,} bytes but stores '
                f'{dataset.id.get_storage_size():,} (never written, or compressed past '
                f'{MAX_H5_INFLATION}x): refused.')
      return {name: [np.asarray(d) for d in datasets[name]] for name in expected}
  except untrusted.WeightsFileError:
    raise
  except Exception as error:  # pylint: disable=broad-except
    raise untrusted.WeightsFileError(f'{path} is not a readable Keras weights file: '
                                     f'{untrusted.short(str(error), 300)}') from None


def keras_variables(path: str, variant: str, include_top: bool,
                    layers=None) -> dict[str, Any]:
  """{'params'} of a Keras VGG16/19 weights file; conv1_1 still takes BGR.

  layers: path's read_keras_h5 when the caller has read it already.
  """
  layers = read_keras_h5(path) if layers is None else layers
  convs = keras_conv_layers(layers)
  if len(convs) != len(conv_names(variant)):
    raise untrusted.WeightsFileError(f'{path} holds {len(convs)} conv layers, a VGG of variant '
                                     f'{variant_with_convs(len(convs))}; variant {variant} has '
                                     f'{len(conv_names(variant))}.')
  if include_top and not keras_has_top(layers):
    raise untrusted.WeightsFileError(
        f'{path} has no fc1/fc2/predictions layers (an include_top=False '
        '"notop" file): it can give the conv base only; pass --notop.')
  names = conv_names(variant) + (['fc6', 'fc7', 'fc8'] if include_top else [])
  params, keras_names = {}, keras_layer_names(variant)
  for name in names:
    kernel, bias = layers[keras_names[name]]
    params[name] = {'kernel': kernel, 'bias': bias}
  return {'params': as_float32(params)}


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """name -> array of a .safetensors file or a pickled (.pth) state dict."""
  if path.endswith('.safetensors'):
    # Optional: the `pretrained` extra.
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    with open(path, 'rb') as f:
      data = f.read()  # Parsed from these bytes: every tensor must lie inside them.
    try:
      return safetensors_numpy.load(data)
    except Exception as error:  # pylint: disable=broad-except
      raise untrusted.WeightsFileError(
          f'{path} is not a readable safetensors file (truncated or corrupt?): '
          f'{untrusted.short(str(error), 300)}') from None
  return torch_files.read_state_dict(path)  # .pth: read without torch or its pickle code.


def detect(path: str) -> tuple[str, str, bool, Any]:
  """(source, variant, include_top, contents) of a weights file, read once.

  contents: the Keras layers or torch state dict, for keras_variables / torch_variables.
  """
  if path.endswith('.h5'):
    layers = read_keras_h5(path)
    return ('keras', variant_of(len(keras_conv_layers(layers)), path), keras_has_top(layers),
            layers)
  if not path.endswith(('.pth', '.pt', '.bin', '.safetensors')):
    raise untrusted.WeightsFileError(
        f'{path}: not a weights file this reads (.h5, .pth, .pt, .bin, '
        '.safetensors).')
  state = read_torch_state_dict(path)
  source = 'timm' if any(k.startswith('pre_logits.') for k in state) else 'torchvision'
  has_top = all(f'{layer}.weight' in state for layer in TORCH_HEADS[source])
  return source, variant_of(len(torch_conv_ids(state)), path), has_top, state


def variant_of(count: int, path: str) -> str:
  variant = variant_with_convs(count)
  if variant not in models.CONFIGS:
    raise untrusted.WeightsFileError(f'{path} holds {count} conv layers: not a VGG-11/13/16/19 '
                                     '(8, 10, 13 or 16).')
  return variant


def check_torch_layout(state, path: str, source: str):
  """Raises if the state dict is the other torch layout than --source says."""
  other = {'torchvision': 'timm', 'timm': 'torchvision'}[source]
  prefix = TORCH_HEADS[other][0].split('.')[0] + '.'
  if any(k.startswith(prefix) for k in state):
    raise untrusted.WeightsFileError(
        f'{path} is a {other} VGG state dict ({prefix}* keys), not a {source} '
        f'one: pass --source={other}.')


def torch_conv_indices(state, path: str, variant: str, source: str) -> tuple[list[int], bool]:
  """(features.N index of each conv, whether a BN follows each), checked against variant."""
  conv_ids = torch_conv_ids(state)
  others = {int(k.split('.')[1]) for k in state if k.startswith('features.')} - set(conv_ids)
  bn = '_bn' if others else ''
  if len(conv_ids) != len(conv_names(variant)):
    found = variant_with_convs(len(conv_ids))
    raise untrusted.WeightsFileError(
        f'{path} holds {len(conv_ids)} conv layers, a VGG of variant {found} '
        f'({source} {TORCH_NAMES.get(found, "?")}{bn}); variant {variant} '
        f'({TORCH_NAMES[variant]}{bn}) has {len(conv_names(variant))}.')
  if not others:
    return conv_ids, False
  # vgg*_bn: features.N conv, features.N+1 BatchNorm2d, features.N+2 ReLU.
  missing = [f'features.{i + 1}.{key}' for i in conv_ids for key in BN_KEYS
             if f'features.{i + 1}.{key}' not in state]
  if missing:
    raise untrusted.WeightsFileError(
        f'{path} is a batch-norm VGG ({TORCH_NAMES[variant]}_bn) with incomplete '
        f'BatchNorm layers: {missing} missing (each conv features.N needs '
        f'features.N+1.{{{",".join(BN_KEYS)}}}).')
  stray = sorted(others - {i + 1 for i in conv_ids})
  if stray:
    raise untrusted.WeightsFileError(
        f'{path} has weights at features.{stray}, which follow no conv: not a '
        f'{source} VGG layout.')
  return conv_ids, True


def torch_head(state, path: str, source: str, channels: int) -> dict[str, Any]:
  """fc6, fc7, fc8 params of either torch layout."""
  keys = [f'{layer}.{kind}' for layer in TORCH_HEADS[source] for kind in ('weight', 'bias')]
  if any(k not in state for k in keys):
    raise untrusted.WeightsFileError(
        f'{path} lacks {[k for k in keys if k not in state]}: pass --notop '
        'for the conv base.')
  (fc6, b6), (fc7, b7), (fc8, b8) = [
      (state[f'{layer}.weight'], state[f'{layer}.bias']) for layer in TORCH_HEADS[source]]
  if fc6.ndim == 2:  # torchvision's Linear [out, C*7*7], flattened in C,H,W order.
    window = int(round(np.sqrt(fc6.shape[1] / channels)))
    fc6 = fc6.reshape(fc6.shape[0], channels, window, window)
  fc6 = fc6.transpose(2, 3, 1, 0)  # [out, C, H, W] -> [H, W, C, out] -> H,W,C flatten.
  return {'fc6': {'kernel': fc6.reshape(-1, fc6.shape[-1]), 'bias': b6},
          'fc7': {'kernel': fc7.reshape(fc7.shape[0], -1).T, 'bias': b7},  # timm: 1x1 conv.
          'fc8': {'kernel': fc8.T, 'bias': b8}}


def torch_variables(path: str, variant: str, include_top: bool,
                    source: str = 'torchvision', state=None) -> dict[str, Any]:
  """{'params'} (and 'batch_stats' for vgg*_bn) of a torchvision or timm state dict.

  conv1_1 still takes torch's normalised input (x/255 - mean) / std. state: path's
  state dict when the caller has read it already (detect's contents).
  """
  state = read_torch_state_dict(path) if state is None else state
  check_torch_layout(state, path, source)
  conv_ids, batch_norm = torch_conv_indices(state, path, variant, source)
  params, stats = {}, {}
  norm_of = models.norm_names(variant)
  for name, index in zip(conv_names(variant), conv_ids):
    kernel = state[f'features.{index}.weight']  # OIHW -> HWIO.
    params[name] = {'kernel': kernel.transpose(2, 3, 1, 0),
                    'bias': state[f'features.{index}.bias']}
    if batch_norm:  # Flax's BatchNorm: scale, bias; mean, var in batch_stats.
      bn, prefix = norm_of[name], f'features.{index + 1}.'
      params[bn] = {'scale': state[prefix + 'weight'], 'bias': state[prefix + 'bias']}
      stats[bn] = {'mean': state[prefix + 'running_mean'], 'var': state[prefix + 'running_var']}
  if include_top:
    channels = params[conv_names(variant)[-1]]['kernel'].shape[-1]
    params.update(torch_head(state, path, source, channels))
  variables = {'params': as_float32(params)}
  if batch_norm:
    variables['batch_stats'] = as_float32(stats)
  return variables
