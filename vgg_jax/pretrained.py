"""Pretrained VGG weights: by name (downloaded, verified, cached), or imported from a file.

  python -m vgg_jax.pretrained --list                    # the named weights, and what is cached
  python -m vgg_jax.pretrained --fetch=vgg16             # download and convert once
  python -m vgg_jax.pretrained --source=keras|torchvision|timm --weights=FILE \\
      --variant=D|E|A|B --out=DIR                         # import a file you have

load(name_or_path) gives (model, variables, mean_rgb) from a name of
vgg_jax.named_weights (torchvision's and Keras's published files), a weights file (.h5,
.pth, .safetensors: layout and variant read from the file) or an import's or a training
run's directory. A name is downloaded once (vgg_jax.download), converted once into an
Orbax checkpoint under $VGG_JAX_CACHE/<name> (default ~/.cache/vgg_jax), and read from
there afterwards. An import writes DIR/checkpoints/0, which --config.init_from=DIR,
--mode=evaluate, --mode=predict and load(DIR) use; --config.init_from=NAME fetches too.
load_checkpoint(DIR) is load's directory case with the checkpoint's meta and step.
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
vgg_jax.weight_readers reads the files.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from absl import app
from absl import flags
import jax
import numpy as np

from vgg_jax import checkpointing
from vgg_jax import download
from vgg_jax import files
from vgg_jax import imagenet_classes
from vgg_jax import models
from vgg_jax import named_weights
from vgg_jax import weight_readers
from vgg_jax.data import statistics_cache

KERAS_MEAN_BGR = named_weights.KERAS_CAFFE.mean
TORCH_MEAN = named_weights.TORCH_IMAGENET.mean
TORCH_STD = named_weights.TORCH_IMAGENET.std
SOURCES = ('keras', 'torchvision', 'timm')
# Each source's own convention; a named entry may say otherwise (vgg16_features).
CONVENTIONS = {'keras': named_weights.KERAS_CAFFE, 'torchvision': named_weights.TORCH_IMAGENET,
               'timm': named_weights.TORCH_IMAGENET}
# What a cached conversion's source.json records; another value converts again.
CONVERSION_FORMAT = 1
decode = imagenet_classes.decode  # (wnid, name, p) rows of ImageNet probabilities.


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
    raise ValueError(f'Unknown source {source!r}; choose one of {SOURCES}.')
  if variant not in ('A', 'B', 'D', 'E'):
    raise ValueError(f'Pretrained VGGs exist for variants A, B, D, E (VGG-11/13/16/19), '
                     f'not {variant!r}.')
  if not os.path.isfile(weights):
    raise FileNotFoundError(f'No weights file at {weights}.')
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


def load(name_or_path: str, checkpoint='best'):
  """(model, variables, mean_rgb) of named weights, a weights file or a directory.

  name_or_path: a name of vgg_jax.named_weights ('vgg16', 'vgg19_bn', 'vgg16_keras', ...:
  fetched once, then read from the cache), a weights file (.h5, .pth, .safetensors: its
  layout, variant and head read from the file) or an import's or a training run's
  directory. A registered name always means the name; a file or directory is taken only
  when the argument looks like a path (untrusted.looks_like_path: './vgg16', not 'vgg16').
  model.apply(variables, images - mean_rgb) gives the logits of RGB 0..255
  images [B, H, W, 3]; features.extract(model, variables, images - mean_rgb, layers) their
  named activations. variables holds 'params' (and 'batch_stats' for batch-norm nets).
  checkpoint (directories): 'best' (lowest eval top-1 error, else the latest), 'latest' or
  a step. mean_rgb is float32 [3]: the weights' own mean, a run's configured one, or the
  one a run computed and cached.
  """
  path = named_weights.as_path(name_or_path)
  if path is not None and os.path.isfile(path):
    source, variant, include_top, contents = weight_readers.detect(path)
    model, variables = build(source, path, variant, include_top, contents=contents)
    return model, variables, np.asarray(mean_rgb_of(CONVENTIONS[source]), np.float32)
  directory = resolve(name_or_path)
  model, variables, meta, _ = load_checkpoint(directory, checkpoint)
  return model, variables, np.asarray(run_mean_rgb(directory, meta), np.float32)


def load_checkpoint(directory: str, which='best'):
  """(model, variables, meta, step) of a run's or import's checkpoint: 'best', 'latest' or N."""
  step = checkpointing.resolve_step(directory, which)
  variables, meta = checkpointing.load_variables(directory, step)
  return models.create_model(checkpointing.model_fields(meta)), variables, meta, step


def resolve(name_or_directory: str) -> str:
  """A run or import directory as it is; a name of named_weights: its cached checkpoint."""
  path = named_weights.as_path(name_or_directory)
  if path is None:
    return fetch(name_or_directory)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path} is no directory (nor a weights file), and no '
                            'registered name.' if not os.path.exists(path) else
                            f'{path} is a file; a run or import directory is needed here.')
  return path


def fetch(name: str) -> str:
  """The directory of named weights' checkpoint in the cache; downloads and converts once.

  Processes of one host share the work: one holds a file lock while it downloads and
  converts, the others wait for it and then read its checkpoint. The conversion records
  the download's whole sha256 and CONVERSION_FORMAT (source.json): a conversion of
  another format is made again, from a download that must have the recorded sha256.
  """
  entry = named_weights.find(name)
  cache, target = named_weights.cache_dir(), named_weights.cached_directory(name)
  if is_cached(name):
    return target
  # JAX's backends start now, while every process of a multi-process run is still in step
  # (starting them is collective); the lock's waiters must not be the ones to start them.
  jax.process_index()
  with download.file_lock(os.path.join(cache, f'.{entry.name}.lock')):
    if is_cached(name):  # Another process finished it while this one waited.
      return target
    remove_staging(cache, name)  # Left by a conversion that was killed.
    pinned = (named_weights.read_record(name) or {}).get('sha256')
    path, sha256 = download.fetch(entry, os.path.join(cache, 'downloads'), pinned=pinned)
    try:
      shutil.rmtree(target, ignore_errors=True)  # Another format's, or half-written.
      sys.stderr.write(f'Converting {entry.file_name} into {target}...\n')
      if jax.process_count() > 1:
        convert_in_a_child(entry, path, target)
      else:
        import_weights(entry.layout, path, entry.variant, target, entry.include_top,
                       entry.convention, origin=entry.url)
      files.write_file_atomically(named_weights.record_path(name), json.dumps(
          {'format': CONVERSION_FORMAT, 'file': entry.file_name, 'url': entry.url,
           'sha256': sha256}, indent=1))
    finally:  # The checkpoint is what later loads read: the download is not kept.
      os.remove(path)
  return target


def convert_in_a_child(entry: named_weights.Weights, path: str, target: str):
  """import_weights in a single-process Python of its own, on the CPU.

  In a multi-process run Orbax's save is collective (barriers, a primary host writing the
  arrays), while the other processes wait on fetch's lock: the conversion runs apart.
  """
  command = [sys.executable, '-m', 'vgg_jax.pretrained', f'--source={entry.layout}',
             f'--weights={path}', f'--variant={entry.variant}', f'--out={target}',
             f'--convention={json.dumps(dataclasses.asdict(entry.convention))}',
             f'--origin={entry.url}'] + ([] if entry.include_top else ['--notop'])
  result = subprocess.run(command, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                          capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f'Converting {path} failed: {result.stderr.strip()[-2000:]}')


def is_cached(name: str) -> bool:
  """Whether name's converted checkpoint, of this CONVERSION_FORMAT, is in the cache."""
  record = named_weights.read_record(name) or {}
  return (record.get('format') == CONVERSION_FORMAT and os.path.isdir(
      os.path.join(named_weights.cached_directory(name), checkpointing.CHECKPOINT_SUBDIR)))


def staging_prefix(out: str) -> str:
  return f'.import-{os.path.basename(os.path.abspath(out))}-'


def remove_staging(parent: str, name: str):
  """Removes the staging directories an interrupted import of `name` left in parent."""
  prefix = staging_prefix(name)
  for entry in os.listdir(parent) if os.path.isdir(parent) else []:
    if entry.startswith(prefix):
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def cached_names() -> set[str]:
  return {name for name in named_weights.WEIGHTS if is_cached(name)}


def run_mean_rgb(directory: str, meta) -> list[float]:
  """The mean RGB a checkpoint's model expects subtracted from its inputs."""
  data = meta['config']['data']
  if data['mean_rgb'] is not None:
    return list(data['mean_rgb'])
  # Computed from the training set at train time and cached beside the checkpoints.
  cache = statistics_cache.path(directory, data['train_split'])
  cached = statistics_cache.read(cache)
  if cached is None:
    raise FileNotFoundError(f'{directory} was trained with a computed mean RGB, but its '
                            f'cache {cache} is missing: pass the mean yourself.')
  return list(cached['mean_rgb'])


def define_flags():
  """The command's flags; defined only when this module runs as a script, so that
  programs importing it (experiments.style_transfer, say) keep --weights and --out."""
  flags.DEFINE_bool('list', False, 'Print the named weights (and which are cached).')
  flags.DEFINE_bool('urls', False, "Print each named file's URL, one a line: the list to "
                    'fill a mirror directory with (see VGG_JAX_MIRROR).')
  flags.DEFINE_string('fetch', None, 'Download and convert these named weights '
                      '(comma-separated) into the cache.')
  flags.DEFINE_string('source', None, "'keras' (.h5), 'torchvision' (vgg* or vgg*_bn state "
                      "dict) or 'timm' (timm's vgg* or vgg*_bn layout).")
  flags.DEFINE_string('weights', None, 'The weights file (.h5, .pth, .safetensors).')
  flags.DEFINE_string('variant', 'D', 'A, B, D or E (VGG-11/13/16/19, or their *_bn).')
  flags.DEFINE_string('out', None, 'Directory to write the checkpoint to.')
  flags.DEFINE_bool('notop', False, 'Import the conv base only (include_top=False).')
  flags.DEFINE_string('convention', None, "The file's input convention as JSON (order, "
                      "scale, mean, std); default: the source's own.")
  flags.DEFINE_string('origin', None, "What the checkpoint records as its origin (default: "
                      "the file's path).")


def main(argv):
  del argv
  args = flags.FLAGS
  if args.list or args.urls:
    print(named_weights.format_table(cached_names()) if args.list else
          '\n'.join(w.url for w in named_weights.WEIGHTS.values()))
    return
  if args.fetch:
    for name in args.fetch.split(','):
      print(f'{name}: {fetch(name)}')
    return
  if not (args.source and args.weights and args.out):
    raise app.UsageError('Give --list, --urls, --fetch=NAME, or --source, --weights and --out.')
  convention = None
  if args.convention:
    fields = json.loads(args.convention)
    convention = named_weights.Convention(
        fields['order'], fields['scale'], tuple(fields['mean']), tuple(fields['std']))
  summary = import_weights(args.source, args.weights, args.variant, args.out,
                           include_top=not args.notop, convention=convention,
                           origin=args.origin)
  batch_norm = ' with batch norm' if summary['batch_norm'] else ''
  print(f"Imported {summary['variant']}{batch_norm} ({len(summary['layers'])} layers, "
        f"{summary['num_classes']} classes) from {args.source} into {summary['out']}; "
        f"feed RGB 0..255 minus mean_rgb={summary['preprocessing']['mean_rgb']}.")


if __name__ == '__main__':
  define_flags()
  app.run(main)
