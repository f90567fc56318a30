"""Import pretrained VGG weights (Keras applications, torchvision, timm) as our checkpoints.

  python -m vgg_jax.pretrained --source=keras|torchvision|timm --weights=FILE \\
      --variant=D|E|A|B --out=DIR

writes DIR/checkpoints/0 that --config.init_from=DIR, --mode=evaluate, --mode=predict
and load(DIR) use. Keras: VGG16/19 .h5 files. torchvision: vgg11/13/16/19 and their
batch-norm twins vgg*_bn (.pth or .safetensors state dicts); a vgg*_bn file, told by its
BatchNorm keys, becomes VGG(batch_norm=True) with its running statistics in
'batch_stats'. timm: the same nets in timm's layout (pre_logits.fc1/fc2 as 7x7 and 1x1
convs, head.fc). The source's input convention is folded into conv1_1 so that the
imported model takes what our pipeline feeds every model, RGB in 0..255 minus `mean_rgb`:
- Keras (caffe): BGR minus [103.939, 116.779, 123.68]. Reversing conv1_1's input
  channels makes it RGB minus [123.68, 116.779, 103.939].
- torchvision and timm (whose pretrained_cfg for vgg* holds the same ImageNet mean and
  std): (x/255 - mean) / std per channel. Dividing conv1_1's input channel c by
  255 * std_c makes it x - 255 * mean. Zero padding means the same in both spaces.
The checkpoint's meta records the source, its original preprocessing and mean_rgb.
vgg_jax.weight_readers reads the files.
"""

import dataclasses
import importlib.resources
import json
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
from vgg_jax import weight_readers

KERAS_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
SOURCES = ('keras', 'torchvision', 'timm')


def read_variables(source: str, weights: str, variant: str,
                   include_top: bool) -> dict[str, Any]:
  """The file's {'params'} (and 'batch_stats'), conv1_1 folded to take RGB minus mean_rgb."""
  if source == 'keras':
    variables = weight_readers.keras_variables(weights, variant, include_top)
  else:
    variables = weight_readers.torch_variables(weights, variant, include_top, source)
  conv1_1 = variables['params']['conv1_1']
  if source == 'keras':
    conv1_1['kernel'] = conv1_1['kernel'][:, :, ::-1, :]  # BGR -> RGB input channels.
  else:  # (x/255 - m)/s == (x - 255 m)/(255 s): divide the kernel only.
    scale = 255.0 * np.asarray(TORCH_STD, np.float32)
    conv1_1['kernel'] = conv1_1['kernel'] / scale[None, None, :, None]
  # conv1_1's output (bias included) is the source's own for the same image, so
  # everything after it, a vgg*_bn's bn1_1 included, is imported unchanged.
  conv1_1['kernel'] = np.ascontiguousarray(conv1_1['kernel'], np.float32)
  return variables


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
  return {'source': source, 'original': f'0..1, minus mean {list(TORCH_MEAN)}, '
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
  variables = read_variables(source, weights, variant, include_top)
  params = variables['params']
  num_classes = params['fc8']['kernel'].shape[1] if include_top else 1000
  fc_width = params['fc7']['kernel'].shape[0] if include_top else 4096
  model = models.VGG(variant=variant, num_classes=num_classes, fc_width=fc_width,
                     batch_norm='batch_stats' in variables)
  check_shapes(variables, model, include_top)
  prep = preprocessing(source)
  class_names = imagenet_class_names() if num_classes == 1000 else [
      str(i) for i in range(num_classes)]
  write_checkpoint(out, variables, model, prep, class_names, include_top, weights)
  return {'out': out, 'variant': variant, 'num_classes': num_classes,
          'batch_norm': model.batch_norm, 'layers': sorted(params), 'preprocessing': prep}


def check_shapes(variables, model: models.VGG, include_top: bool):
  """Every imported array has the shape `model` expects; no layer is missing."""
  size = model.image_size
  expected = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, size, size, 3), np.float32))
  for collection, layers in variables.items():
    for layer, arrays in layers.items():
      if layer not in expected.get(collection, {}):
        raise ValueError(f'Layer {layer} ({collection}) of the weights file is not in '
                         f'variant {model.variant}.')
      for key, value in arrays.items():
        want = tuple(expected[collection][layer][key].shape)
        if value.shape != want:
          raise ValueError(f'Layer {layer} {key} has shape {value.shape} in the weights '
                           f'file but variant {model.variant} needs {want}.')
  head = ('fc6', 'fc7', 'fc8')
  missing = [f'{collection}/{name}' for collection, layers in expected.items()
             for name in layers if name not in variables.get(collection, {})
             and (include_top or name not in head)]
  if missing:
    raise ValueError(f'The weights file lacks layers {missing} of variant {model.variant}.')


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
                     weights):
  """Writes DIR/checkpoints/0 atomically: nothing half-written is left at out.

  The state is {'step', 'params'}, plus 'batch_stats' for batch-norm nets.
  """
  if os.path.exists(os.path.join(out, checkpointing.CHECKPOINT_SUBDIR)):
    raise FileExistsError(f'{out} already holds checkpoints; choose a new --out.')
  parent = os.path.dirname(os.path.abspath(out)) or '.'
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.import-', dir=parent)
  try:
    state = {'step': np.zeros((), np.int32), **variables}
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


def load(directory: str, checkpoint='best'):
  """(model, variables, mean_rgb) of an import's or a training run's directory.

  model.apply(variables, images - mean_rgb) gives the logits of RGB 0..255 images
  [B, H, W, 3]; features.extract(model, variables, images - mean_rgb, layers) their
  named activations. variables holds 'params' (and 'batch_stats' for batch-norm nets).
  checkpoint: 'best' (lowest eval top-1 error, else the latest), 'latest' or a step.
  mean_rgb is float32 [3]: the run's configured mean, or the one it computed and cached.
  """
  model, variables, meta, _ = checkpointing.load_model(directory, checkpoint)
  return model, variables, np.asarray(run_mean_rgb(directory, meta), np.float32)


def run_mean_rgb(directory: str, meta) -> list[float]:
  """The mean RGB a checkpoint's model expects subtracted from its inputs."""
  data = meta['config']['data']
  if data['mean_rgb'] is not None:
    return list(data['mean_rgb'])
  # Computed from the training set at train time and cached beside the checkpoints (the
  # file vgg_jax.data.statistics writes; read here without importing TensorFlow).
  cache = os.path.join(directory, f"rgb_stats_{data['train_split']}.json")
  if not os.path.isfile(cache):
    raise FileNotFoundError(f'{directory} was trained with a computed mean RGB, but its '
                            f'cache {cache} is missing: pass the mean yourself.')
  with open(cache) as f:
    return list(json.load(f)['mean_rgb'])


def define_flags():
  """The import command's flags; defined only when this module runs as a script, so that
  programs importing it (experiments.style_transfer, say) keep --weights and --out."""
  flags.DEFINE_string('source', None, "'keras' (.h5), 'torchvision' (vgg* or vgg*_bn state "
                      "dict) or 'timm' (timm's vgg* or vgg*_bn layout).")
  flags.DEFINE_string('weights', None, 'The weights file (.h5, .pth, .safetensors).')
  flags.DEFINE_string('variant', 'D', 'A, B, D or E (VGG-11/13/16/19, or their *_bn).')
  flags.DEFINE_string('out', None, 'Directory to write the checkpoint to.')
  flags.DEFINE_bool('notop', False, 'Import the conv base only (include_top=False).')


def main(argv):
  del argv
  args = flags.FLAGS
  if not (args.source and args.weights and args.out):
    raise app.UsageError('--source, --weights and --out are required.')
  summary = import_weights(args.source, args.weights, args.variant, args.out,
                           include_top=not args.notop)
  batch_norm = ' with batch norm' if summary['batch_norm'] else ''
  print(f"Imported {summary['variant']}{batch_norm} ({len(summary['layers'])} layers, "
        f"{summary['num_classes']} classes) from {args.source} into {summary['out']}; "
        f"feed RGB 0..255 minus mean_rgb={summary['preprocessing']['mean_rgb']}.")


if __name__ == '__main__':
  define_flags()
  app.run(main)
