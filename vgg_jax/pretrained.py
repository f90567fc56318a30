"""Import pretrained VGG weights (Keras applications, torchvision) as our checkpoints.

  python -m vgg_jax.pretrained --source=keras|torchvision --weights=FILE \\
      --variant=D|E|A|B --out=DIR

writes DIR/checkpoints/0 that --config.init_from=DIR, --mode=evaluate and --mode=predict
use. The source's input convention is folded into conv1_1 so that the imported model
takes what our pipeline feeds every model, RGB in 0..255 minus `mean_rgb`:
- Keras (caffe): BGR minus [103.939, 116.779, 123.68]. Reversing conv1_1's input
  channels makes it RGB minus [123.68, 116.779, 103.939].
- torchvision: (x/255 - mean) / std per channel. Dividing conv1_1's input channel c by
  255 * std_c makes it x - 255 * mean. Zero padding means the same in both spaces.
The checkpoint's meta records the source, its original preprocessing and mean_rgb.
h5py (Keras files), safetensors and torch (torchvision files) are optional dependencies,
imported only by the reader that needs them.
"""

import dataclasses
import importlib.resources
import os
import shutil
import tempfile
from typing import Any

from absl import app
from absl import flags
import jax
import numpy as np

from vgg_jax import checkpointing
from vgg_jax import models

KERAS_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
SOURCES = ('keras', 'torchvision')
# Conv layers per variant, in order, as torchvision's vgg11/13/16/19 hold them.
TORCH_NAMES = {'A': 'vgg11', 'B': 'vgg13', 'D': 'vgg16', 'E': 'vgg19'}


def conv_names(variant: str) -> list[str]:
  return [n for n in models.layer_names(variant) if n.startswith('conv')]


def variant_with_convs(count: int) -> str:
  by_count = {len(conv_names(v)): v for v in ('A', 'B', 'D', 'E')}
  return by_count.get(count, f'none of A/B/D/E ({count} conv layers)')


def keras_layer_name(name: str) -> str:
  """Our conv3_2 / fc6 -> Keras's block3_conv2 / fc1."""
  if name.startswith('conv'):
    stage, index = name[4:].split('_')
    return f'block{stage}_conv{index}'
  return {'fc6': 'fc1', 'fc7': 'fc2', 'fc8': 'predictions'}[name]


def read_keras_h5(path: str) -> dict[str, list[np.ndarray]]:
  """Keras layer name -> [kernel, bias], from either .h5 layout."""
  # Optional: the `pretrained` extra.
  import h5py  # pylint: disable=g-import-not-at-top
  try:
    f = h5py.File(path, 'r')
  except OSError as error:
    raise ValueError(f'{path} is not a readable HDF5 file (truncated or corrupt?): '
                     f'{error}') from error
  with f:
    layers = {}
    if 'layers' in f:  # Keras 3 .weights.h5: layers/<class key>/vars/{0,1}, name in attrs.
      for key, group in f['layers'].items():
        vars_group = group.get('vars')
        if vars_group is None or not len(vars_group):
          continue
        name = vars_group.attrs.get('name', key)
        name = name.decode() if isinstance(name, bytes) else str(name)
        layers[name] = [np.asarray(vars_group[str(i)]) for i in range(len(vars_group))]
    else:  # Classic layout: attrs layer_names, each group's attrs weight_names.
      root = f['model_weights'] if 'model_weights' in f else f
      if 'layer_names' not in root.attrs:
        raise ValueError(f'{path} is neither a Keras 3 .weights.h5 nor a classic Keras '
                         'weights file (no layers/ group, no layer_names attribute).')
      for name in root.attrs['layer_names']:
        name = name.decode() if isinstance(name, bytes) else str(name)
        group = root[name]
        weight_names = [w.decode() if isinstance(w, bytes) else str(w)
                        for w in group.attrs.get('weight_names', [])]
        if weight_names:
          layers[name] = [np.asarray(group[w]) for w in weight_names]
  return layers


def keras_params(path: str, variant: str, include_top: bool) -> dict[str, Any]:
  layers = read_keras_h5(path)
  convs = [n for n in layers if n.startswith('block') and '_conv' in n]
  if len(convs) != len(conv_names(variant)):
    raise ValueError(f'{path} holds {len(convs)} conv layers, a VGG of variant '
                     f'{variant_with_convs(len(convs))}; variant {variant} has '
                     f'{len(conv_names(variant))}.')
  has_top = all(n in layers for n in ('fc1', 'fc2', 'predictions'))
  if include_top and not has_top:
    raise ValueError(f'{path} has no fc1/fc2/predictions layers (an include_top=False '
                     '"notop" file): it can give the conv base only; pass --notop.')
  names = conv_names(variant) + (['fc6', 'fc7', 'fc8'] if include_top else [])
  params = {}
  for name in names:
    kernel, bias = layers[keras_layer_name(name)]
    params[name] = {'kernel': kernel, 'bias': bias}
  params['conv1_1']['kernel'] = params['conv1_1']['kernel'][:, :, ::-1, :]  # BGR->RGB.
  return as_float32(params)


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  if path.endswith('.safetensors'):
    # Optional: the `pretrained` extra.
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    try:
      return safetensors_numpy.load_file(path)
    except Exception as error:  # pylint: disable=broad-except
      raise ValueError(f'{path} is not a readable safetensors file (truncated or corrupt?): '
                       f'{error}') from error
  try:  # Optional dependency, needed for pickled .pth files only.
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ValueError(f'Reading {path} (a pickled PyTorch file) needs torch, which is not '
                     'installed: pip install torch, or convert it to .safetensors '
                     '(safetensors.torch.save_file(state_dict, "vgg.safetensors")).') from error
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f'{path} could not be read by torch.load (truncated or corrupt?): '
                     f'{error}') from error
  return {k: v.float().numpy() for k, v in state.items()}


def torch_params(path: str, variant: str, include_top: bool) -> dict[str, Any]:
  state = read_torch_state_dict(path)
  feature_ids = sorted({int(k.split('.')[1]) for k in state if k.startswith('features.')
                        and k.endswith('.weight')})
  names = conv_names(variant)
  if len(feature_ids) != len(names):
    raise ValueError(f'{path} holds {len(feature_ids)} conv layers, a VGG of variant '
                     f'{variant_with_convs(len(feature_ids))} (torchvision '
                     f'{TORCH_NAMES.get(variant_with_convs(len(feature_ids)), "?")}); variant '
                     f'{variant} ({TORCH_NAMES.get(variant, "?")}) has {len(names)}.')
  if any('bn' in k or 'running_mean' in k for k in state):
    raise ValueError(f'{path} is a batch-norm VGG (vgg*_bn); only plain VGG is supported.')
  params = {}
  for name, index in zip(names, feature_ids):
    kernel = state[f'features.{index}.weight']  # OIHW -> HWIO.
    params[name] = {'kernel': kernel.transpose(2, 3, 1, 0),
                    'bias': state[f'features.{index}.bias']}
  if include_top:
    if 'classifier.0.weight' not in state:
      raise ValueError(f'{path} has no classifier.* weights: pass --notop for the conv base.')
    fc6 = state['classifier.0.weight']  # [out, C*7*7] in C,H,W order -> [H*W*C, out].
    channels = params[names[-1]]['kernel'].shape[-1]
    window = int(round(np.sqrt(fc6.shape[1] / channels)))
    fc6 = fc6.reshape(-1, channels, window, window).transpose(2, 3, 1, 0)
    params['fc6'] = {'kernel': fc6.reshape(-1, fc6.shape[-1]), 'bias': state['classifier.0.bias']}
    params['fc7'] = {'kernel': state['classifier.3.weight'].T, 'bias': state['classifier.3.bias']}
    params['fc8'] = {'kernel': state['classifier.6.weight'].T, 'bias': state['classifier.6.bias']}
  scale = 255.0 * np.asarray(TORCH_STD, np.float32)  # (x/255 - m)/s == (x - 255 m)/(255 s).
  params['conv1_1']['kernel'] = params['conv1_1']['kernel'] / scale[None, None, :, None]
  return as_float32(params)


def as_float32(params):
  """Contiguous float32 copies of every array."""
  return {layer: {k: np.ascontiguousarray(v, np.float32) for k, v in p.items()}
          for layer, p in params.items()}


def imagenet_class_names() -> list[str]:
  """ImageNet's 1000 synset ids (n01440764, ...), as tensorflow-datasets ships them."""
  text = (importlib.resources.files('tensorflow_datasets') / 'datasets' / 'imagenet2012' /
          'labels.txt').read_text()
  return [line.strip() for line in text.splitlines() if line.strip()]


def preprocessing(source: str) -> dict[str, Any]:
  if source == 'keras':
    return {'source': 'keras', 'original': 'caffe: RGB->BGR, 0..255, minus BGR means '
            f'{list(KERAS_MEAN_BGR)}', 'mean_rgb': list(KERAS_MEAN_BGR[::-1]),
            'folded_into_conv1_1': 'input channels reversed (BGR->RGB)'}
  return {'source': 'torchvision', 'original': f'0..1, minus mean {list(TORCH_MEAN)}, '
          f'divided by std {list(TORCH_STD)}',
          'mean_rgb': [255.0 * m for m in TORCH_MEAN],
          'folded_into_conv1_1': 'input channel c divided by 255 * std_c'}


def import_weights(source: str, weights: str, variant: str, out: str,
                   include_top: bool = True) -> dict[str, Any]:
  """Reads `weights`, checks them against `variant`, writes an Orbax checkpoint to out."""
  if source not in SOURCES:
    raise ValueError(f'Unknown source {source!r}; choose one of {SOURCES}.')
  if variant not in ('A', 'B', 'D', 'E'):
    raise ValueError(f'Pretrained VGGs exist for variants A, B, D, E (VGG-11/13/16/19), '
                     f'not {variant!r}.')
  if not os.path.isfile(weights):
    raise FileNotFoundError(f'No weights file at {weights}.')
  reader = keras_params if source == 'keras' else torch_params
  params = reader(weights, variant, include_top)
  num_classes = params['fc8']['kernel'].shape[1] if include_top else 1000
  fc_width = params['fc7']['kernel'].shape[0] if include_top else 4096
  model = models.VGG(variant=variant, num_classes=num_classes, fc_width=fc_width)
  check_shapes(params, model, include_top)
  prep = preprocessing(source)
  class_names = imagenet_class_names() if num_classes == 1000 else [
      str(i) for i in range(num_classes)]
  write_checkpoint(out, params, model, prep, class_names, include_top, weights)
  return {'out': out, 'variant': variant, 'num_classes': num_classes,
          'layers': sorted(params), 'preprocessing': prep}


def check_shapes(params, model: models.VGG, include_top: bool):
  """Every imported array has the shape `model` expects."""
  variant = model.variant
  expected = models.param_shapes(model)
  for layer, arrays in params.items():
    for key, value in arrays.items():
      want = tuple(expected[layer][key].shape)
      if value.shape != want:
        raise ValueError(f'Layer {layer} {key} has shape {value.shape} in the weights file '
                         f'but variant {variant} needs {want}.')
  missing = [n for n in expected if n not in params and (include_top or n.startswith('conv'))]
  if missing:
    raise ValueError(f'The weights file lacks layers {missing} of variant {variant}.')


def stored_config(model: models.VGG, mean_rgb) -> dict[str, Any]:
  """meta['config'] of an imported checkpoint: what the import knows, nothing more.

  'model' holds every field of the checked `model` (dtype by name); 'data' ImageNet from
  TFDS at the paper's single-scale setting S = Q = 256 with the source's mean RGB.
  Readers merge this over the base config's defaults.
  """
  fields = {field.name: getattr(model, field.name) for field in dataclasses.fields(models.VGG)
            if field.name not in ('parent', 'name')}  # Flax's own fields, not the net's.
  fields['dtype'] = np.dtype(fields['dtype']).name
  data = {'source': 'tfds', 'name': 'imagenet2012', 'train_split': 'train',
          'eval_split': 'validation', 'scale_min': 256, 'scale_max': 256, 'eval_scale': 256,
          'mean_rgb': [float(m) for m in mean_rgb]}
  return {'model': fields, 'data': data}


def write_checkpoint(out, params, model: models.VGG, prep, class_names, include_top,
                     weights):
  """Writes DIR/checkpoints/0 atomically: nothing half-written is left at out."""
  if os.path.exists(os.path.join(out, checkpointing.CHECKPOINT_SUBDIR)):
    raise FileExistsError(f'{out} already holds checkpoints; choose a new --out.')
  parent = os.path.dirname(os.path.abspath(out)) or '.'
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.import-', dir=parent)
  try:
    state = {'step': np.zeros((), np.int32), 'params': params}
    meta = checkpointing.make_meta(
        stored_config(model, prep['mean_rgb']), 0, global_batch_size=0,
        num_classes=model.num_classes, class_names=class_names, include_top=include_top,
        preprocessing=prep, imported_from=os.path.abspath(weights))
    with checkpointing.create_manager(staging, async_save=False) as manager:
      checkpointing.save(manager, 0, jax.tree_util.tree_map(np.asarray, state), meta)
      manager.wait_until_finished()
    os.makedirs(out, exist_ok=True)
    os.replace(os.path.join(staging, checkpointing.CHECKPOINT_SUBDIR),
               os.path.join(out, checkpointing.CHECKPOINT_SUBDIR))
  finally:
    shutil.rmtree(staging, ignore_errors=True)


_SOURCE = flags.DEFINE_string('source', None, "'keras' or 'torchvision'.")
_WEIGHTS = flags.DEFINE_string('weights', None, 'The weights file (.h5, .pth, .safetensors).')
_VARIANT = flags.DEFINE_string('variant', 'D', 'A, B, D or E (VGG-11/13/16/19).')
_OUT = flags.DEFINE_string('out', None, 'Directory to write the checkpoint to.')
_NOTOP = flags.DEFINE_bool('notop', False, 'Import the conv base only (include_top=False).')


def main(argv):
  del argv
  if not (_SOURCE.value and _WEIGHTS.value and _OUT.value):
    raise app.UsageError('--source, --weights and --out are required.')
  summary = import_weights(_SOURCE.value, _WEIGHTS.value, _VARIANT.value, _OUT.value,
                           include_top=not _NOTOP.value)
  print(f"Imported {summary['variant']} ({len(summary['layers'])} layers, "
        f"{summary['num_classes']} classes) from {_SOURCE.value} into {summary['out']}; "
        f"feed RGB 0..255 minus mean_rgb={summary['preprocessing']['mean_rgb']}.")


if __name__ == '__main__':
  app.run(main)
