"""A foreign weights file -> our layout, its input convention folded in, as an Orbax checkpoint.

Keras: VGG16/19 .h5 files. torchvision: vgg11/13/16/19 and their batch-norm twins vgg*_bn
(.pth or .safetensors state dicts; a vgg*_bn file, told by its BatchNorm keys, becomes
VGG(batch_norm=True) with its running statistics in 'batch_stats'). timm: the same nets
in timm's layout (pre_logits.fc1/fc2 as 7x7 and 1x1 convs, head.fc). The source's input
convention (named_weights.Convention) is folded into conv1_1 so that the imported model
takes what our pipeline feeds every model, RGB in 0..255 minus `mean_rgb`:
- Keras (caffe): BGR minus [103.939, 116.779, 123.68]. Reversing conv1_1's input
  channels makes it RGB minus [123.68, 116.779, 103.939].
- torchvision and timm (whose pretrained_cfg for vgg* holds the same ImageNet mean and
  std): (x/255 - mean) / std per channel. Dividing conv1_1's input channel c by
  255 * std_c makes it x - 255 * mean. Zero padding means the same in both spaces.
The checkpoint's meta records the source, its original preprocessing and mean_rgb.
weight_readers reads the files.
"""

import dataclasses
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np

from vgg_jax import checkpointing
from vgg_jax import errors
from vgg_jax.data import imagenet_classes
from vgg_jax import models
from vgg_jax.pretrained import named_weights
from vgg_jax.pretrained import weight_readers

KERAS_MEAN_BGR = named_weights.KERAS_CAFFE.mean
TORCH_MEAN = named_weights.TORCH_IMAGENET.mean
TORCH_STD = named_weights.TORCH_IMAGENET.std
SOURCES = ('keras', 'torchvision', 'timm')
# Each source's own convention; a named entry may say otherwise (vgg16_features).
CONVENTIONS = {'keras': named_weights.KERAS_CAFFE, 'torchvision': named_weights.TORCH_IMAGENET,
               'timm': named_weights.TORCH_IMAGENET}


def source_to_rgb(convention: named_weights.Convention) -> list[int]:
  """For each RGB channel, the source's channel that holds it."""
  return [0, 1, 2] if convention.order == 'RGB' else [2, 1, 0]


def mean_rgb_of(convention: named_weights.Convention) -> list[float]:
  """The convention's mean on RGB 0..255: what our pipeline subtracts."""
  return [convention.mean[c] * 255.0 / convention.scale for c in source_to_rgb(convention)]


def read_variables(source: str, weights: str, variant: str, include_top: bool,
                   convention: named_weights.Convention | None = None,
                   contents=None) -> dict[str, Any]:
  """The file's {'params'} (and 'batch_stats'), conv1_1 folded to take RGB minus mean_rgb.

  contents: the file as weight_readers.detect read it, when it has been read already.
  """
  convention = convention or CONVENTIONS[source]
  if source == 'keras':
    variables = weight_readers.keras_variables(weights, variant, include_top, contents)
  else:
    variables = weight_readers.torch_variables(weights, variant, include_top, source,
                                               contents)
  conv1_1 = variables['params']['conv1_1']
  order = source_to_rgb(convention)
  # ((x * scale/255)[order] - m) / s == (x - 255 m/scale) / (255 s/scale): reorder the
  # input channels, then divide them (Keras: BGR -> RGB, divided by 1).
  divisor = np.asarray([255.0 * convention.std[c] / convention.scale for c in order], np.float32)
  kernel = conv1_1['kernel'][:, :, order, :] / divisor[None, None, :, None]
  # conv1_1's output (bias included) is the source's own for the same image, so
  # everything after it, a vgg*_bn's bn1_1 included, is imported unchanged.
  conv1_1['kernel'] = np.ascontiguousarray(kernel, np.float32)
  return variables


def preprocessing(source: str, convention: named_weights.Convention | None = None):
  """meta['preprocessing'] of an import: the source's convention and what was folded."""
  convention = convention or CONVENTIONS[source]
  folded = ['input channels reversed (BGR->RGB)'] if convention.order == 'BGR' else []
  if convention.std != (1.0, 1.0, 1.0) or convention.scale != 255.0:
    folded.append(f'input channel c divided by 255 * std_c / {convention.scale:g}')
  return {'source': source, 'original': convention.describe(),
          'mean_rgb': mean_rgb_of(convention), 'folded_into_conv1_1': '; '.join(folded)}


def import_weights(source: str, weights: str, variant: str, out: str,
                   include_top: bool = True,
                   convention: named_weights.Convention | None = None,
                   origin: str | None = None) -> dict[str, Any]:
  """Reads `weights`, checks them against `variant`, writes an Orbax checkpoint to out.

  origin: what meta['imported_from'] records (default: the file's path).
  """
  if source not in SOURCES:
    raise errors.InvalidInput(f'Unknown source {source!r}; choose one of {SOURCES}.')
  if variant not in ('A', 'B', 'D', 'E'):
    raise errors.InvalidInput(
        f'Pretrained VGGs exist for variants A, B, D, E (VGG-11/13/16/19), '
        f'not {variant!r}.')
  if not os.path.isfile(weights):
    raise errors.NotFound(f'No weights file at {weights}.')
  model, variables = build(source, weights, variant, include_top, convention)
  prep = preprocessing(source, convention)
  class_names = imagenet_classes.wnids() if model.num_classes == 1000 else [
      str(i) for i in range(model.num_classes)]
  write_checkpoint(out, variables, model, prep, class_names, include_top,
                   origin or os.path.abspath(weights))
  return {'out': out, 'variant': variant, 'num_classes': model.num_classes,
          'batch_norm': model.batch_norm, 'layers': sorted(variables['params']),
          'preprocessing': prep}


def build(source, weights, variant, include_top, convention=None, contents=None):
  """(model, variables) of a weights file, every shape checked against the model."""
  variables = read_variables(source, weights, variant, include_top, convention, contents)
  params = variables['params']
  num_classes = params['fc8']['kernel'].shape[1] if include_top else 1000
  fc_width = params['fc7']['kernel'].shape[0] if include_top else 4096
  model = models.VGG(variant=variant, num_classes=num_classes, fc_width=fc_width,
                     batch_norm='batch_stats' in variables)
  check_shapes(variables, model, include_top)
  return model, variables


def check_shapes(variables, model: models.VGG, include_top: bool):
  """Every imported array has the shape `model` expects; no layer is missing."""
  size = model.image_size
  expected = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, size, size, 3), np.float32))
  for collection, layers in variables.items():
    for layer, arrays in layers.items():
      if layer not in expected.get(collection, {}):
        raise errors.InvalidInput(
            f'Layer {layer} ({collection}) of the weights file is not in '
            f'variant {model.variant}.')
      for key, value in arrays.items():
        want = tuple(expected[collection][layer][key].shape)
        if value.shape != want:
          raise errors.InvalidInput(
              f'Layer {layer} {key} has shape {value.shape} in the weights '
              f'file but variant {model.variant} needs {want}.')
  head = ('fc6', 'fc7', 'fc8')
  missing = [f'{collection}/{name}' for collection, layers in expected.items()
             for name in layers if name not in variables.get(collection, {})
             and (include_top or name not in head)]
  if missing:
    raise errors.InvalidInput(
        f'The weights file lacks layers {missing} of variant {model.variant}.')


def stored_config(model: models.VGG, mean_rgb) -> dict[str, Any]:
  """meta['config'] of an imported checkpoint: what the import knows, nothing more.

  'model' holds every field of the checked `model` (dtype by name); 'data' ImageNet from
  TFDS at the paper's single-scale setting S = Q = 256 with the source's mean RGB.
  Readers merge this over the base config's defaults.
  """
  # Flax's own fields are not the net's; frozen_norms is set by a training run's config.
  fields = {field.name: getattr(model, field.name) for field in dataclasses.fields(models.VGG)
            if field.name not in ('parent', 'name', 'frozen_norms')}
  fields['dtype'] = np.dtype(fields['dtype']).name
  data = {'source': 'tfds', 'name': 'imagenet2012', 'train_split': 'train',
          'eval_split': 'validation', 'scale_min': 256, 'scale_max': 256, 'eval_scale': 256,
          'mean_rgb': [float(m) for m in mean_rgb]}
  return {'model': fields, 'data': data}


def write_checkpoint(out, variables, model: models.VGG, prep, class_names, include_top,
                     origin: str, **extra_meta):
  """Writes DIR/checkpoints/0 atomically: nothing half-written is left at out.

  The state is {'step', 'params'}, plus 'batch_stats' for batch-norm nets.
  """
  if os.path.exists(os.path.join(out, checkpointing.CHECKPOINT_SUBDIR)):
    raise FileExistsError(f'{out} already holds checkpoints; choose a new --out.')
  parent = os.path.dirname(os.path.abspath(out)) or '.'
  os.makedirs(parent, exist_ok=True)
  remove_staging(parent, out)  # An earlier import of out that was killed.
  staging = tempfile.mkdtemp(prefix=staging_prefix(out), dir=parent)
  try:
    state = {'step': np.zeros((), np.int32), **variables}
    meta = checkpointing.make_meta(
        stored_config(model, prep['mean_rgb']), 0, global_batch_size=0,
        num_classes=model.num_classes, class_names=class_names, include_top=include_top,
        preprocessing=prep, imported_from=origin, **extra_meta)
    with checkpointing.create_manager(staging, async_save=False) as manager:
      checkpointing.save(manager, 0, jax.tree_util.tree_map(np.asarray, state), meta)
      manager.wait_until_finished()
    os.makedirs(out, exist_ok=True)
    os.replace(os.path.join(staging, checkpointing.CHECKPOINT_SUBDIR),
               os.path.join(out, checkpointing.CHECKPOINT_SUBDIR))
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def staging_prefix(out: str) -> str:
  return f'.import-{os.path.basename(os.path.abspath(out))}-'


def remove_staging(parent: str, name: str):
  """Removes the staging directories an interrupted import of `name` left in parent."""
  prefix = staging_prefix(name)
  for entry in os.listdir(parent) if os.path.isdir(parent) else []:
    if entry.startswith(prefix):
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
