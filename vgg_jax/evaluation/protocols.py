"""The paper's test protocols (Sec. 3.2) -> top-1 / top-5 error.

Protocols, each at one or several test scales Q (posteriors averaged over scales):
  single          centre crop of the image rescaled to Q (1 view)
  dense           the whole rescaled image, fully-convolutional, class scores averaged,
                  softmax averaged with the horizontal flip (2 views)
  multicrop       5x5 grid of crops x 2 flips (50 views)
  dense+multicrop the average of the two posteriors (52 views)
Fusion averages the posteriors of several checkpoints. flip=False drops the horizontal
flips (dense: 1 view, multicrop: 25) for classes that flipping changes, such as digits.

Each process evaluates its shard of the split on its local devices (views split across
them); the counts are summed over processes at the end.
"""

import json
import os
import time
from typing import Any, NamedTuple, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tensorflow as tf

from vgg_jax import errors
from vgg_jax.data import preprocessing
from vgg_jax.data import scan
from vgg_jax.data import sources
from vgg_jax.data import statistics
from vgg_jax.evaluation import explain
from vgg_jax.evaluation import report
from vgg_jax.evaluation import views
from vgg_jax import files
from vgg_jax import pretrained
from vgg_jax import stderr

PREDICT_CHUNK = 64  # Images rescaled and classified together by predict.


class Protocol(NamedTuple):
  """How each test image is seen (Sec. 3.2): views.PROTOCOLS' `name` at every test scale
  Q of `scales`, for nets trained on image_size crops, with horizontal flips if `flip`."""
  name: str
  scales: tuple[int, ...]
  image_size: int
  flip: bool = True


def check_protocol(protocol: str, scales: Sequence[int], image_size: int):
  if protocol not in views.PROTOCOLS:
    raise errors.InvalidInput(
        f'Unknown evaluation protocol {protocol!r}; choose one of '
        f'{views.PROTOCOLS}.')
  if not scales:
    raise errors.InvalidInput('config.eval.scales is empty: give at least one test scale Q.')
  small = [q for q in scales if q < image_size]
  if small:
    raise errors.InvalidInput(
        f'Test scale Q={small[0]} is smaller than the crop size '
        f'{image_size}: every Q must be at least the training crop.')


def rescaled_images(data_config, split: str, scales: Sequence[int], mean_rgb,
                    max_examples: int | None = None):
  """Yields (label, [image rescaled to each Q, mean subtracted]) for this process's shard."""
  source = sources.load_source(data_config, split, jax.process_index(), jax.process_count())
  ds = source.make_dataset()
  if max_examples:
    ds = ds.take(max_examples)

  def prepare(ex):
    image = preprocessing.decode_example(ex, source.encoded)
    return ex['label'], tuple(preprocessing.preprocess_for_dense(image, scale=q,
                                                                 mean_rgb=mean_rgb)
                              for q in scales)

  ds = ds.map(preprocessing.as_written(prepare), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.prefetch(8)
  for label, images in ds.as_numpy_iterator():
    yield int(label), list(images)


def evaluate_checkpoints(predictors: Sequence[views.Predictor], data_config,
                         protocol: Protocol, mean_rgb, *, split: str | None = None,
                         max_examples: int | None = None, chunk: int = 256,
                         collector: report.Collector | None = None) -> dict[str, Any]:
  """Top-1/top-5 error of the fused predictors (one class count: run checks) over the split.

  Images are read `chunk` at a time (dense: the more, the fuller each shape bucket's
  batches); a progress line follows each chunk. collector, if given, is fed each chunk's
  fused posteriors, labels and images (at the first scale).
  """
  name, scales, image_size, flip = protocol
  check_protocol(name, scales, image_size)
  split = split or data_config.eval_split
  counts = np.zeros(3)  # top-1 mistakes, top-5 mistakes, images.
  labels, pending, start = [], [], time.perf_counter()

  def flush():
    fused = 0.0
    for predictor in predictors:
      per_scale = [views.posteriors_at_scale(
          predictor, [images[s] for images in pending], name, image_size, flip)
                   for s in range(len(scales))]
      fused = fused + np.mean(per_scale, axis=0)
    fused = fused / len(predictors)
    truth = np.asarray(labels)
    top5 = np.argsort(-fused, axis=1)[:, :min(5, fused.shape[1])]
    counts[0] += np.sum(top5[:, 0] != truth)
    counts[1] += np.sum(~np.any(top5 == truth[:, None], axis=1))
    counts[2] += len(truth)
    if collector is not None:
      collector.add(fused, truth, [images[0] for images in pending])
    labels.clear()
    pending.clear()
    logging.info('%s: %d images, %.1f images/s, %d compiled programs (shape x batch size).',
                 name, counts[2], counts[2] / (time.perf_counter() - start),
                 len(set().union(*(p.programs for p in predictors))))

  for label, images in rescaled_images(data_config, split, scales, mean_rgb, max_examples):
    labels.append(label)
    pending.append(images)
    if len(pending) == chunk:
      flush()
  if pending:
    flush()
  if jax.process_count() > 1:  # The allgather's float32 counts are whole numbers < 2^24.
    counts = np.sum(np.float64(multihost_utils.process_allgather(counts)), axis=0)
  images = max(int(counts[2]), 1)
  # Python floats, as json (the cached results) needs, equal for any process count.
  return {'protocol': name, 'scales': list(scales), 'top1_error': float(counts[0] / images),
          'top5_error': float(counts[1] / images), 'num_images': int(counts[2]),
          'views_per_image': (views.views_per_scale(name, flip) * len(scales)
                              * len(predictors)),
          'flip': flip, 'num_models': len(predictors)}


def run(eval_config, workdirs: Sequence[str], output_dir: str | None = None,
        data_config=None) -> dict[str, Any]:
  """Evaluates (and fuses) the checkpoints of workdirs; writes eval_<protocol>.json.

  data_config: the data section to test on; by default the first run's stored one.
  """
  loaded = [pretrained.load_checkpoint(w, eval_config.checkpoint) for w in workdirs]
  classes = {model.num_classes for model, *_ in loaded}
  if len(classes) > 1:
    raise errors.InvalidInput(
        'Cannot fuse models with different class counts: ' + ', '.join(
        f'{w}: {m.num_classes}' for w, (m, *_) in zip(workdirs, loaded)))
  sizes = {model.image_size for model, *_ in loaded}
  if len(sizes) > 1:
    raise errors.InvalidInput(
        f'Cannot fuse models trained at different crop sizes: {sorted(sizes)}.')
  model, _, meta, _ = loaded[0]
  if data_config is None:
    data_config = ml_collections.ConfigDict(meta['config']['data'])
  stats = statistics.rgb_statistics(data_config, os.path.abspath(workdirs[0]))
  scales = list(eval_config.scales) or [data_config.eval_scale]
  predictors = [views.Predictor(m, variables, eval_config.batch_size)
                for m, variables, _, _ in loaded]
  logging.info('Evaluating %s (steps %s) with protocol %s at Q=%s...', ', '.join(workdirs),
               [step for *_, step in loaded], eval_config.protocol, scales)
  collector = (report.Collector(model.num_classes, stats['mean_rgb'])
               if output_dir and eval_config.get('report', True) else None)
  protocol = Protocol(eval_config.protocol, tuple(scales), model.image_size, eval_config.flip)
  result = evaluate_checkpoints(
      predictors, data_config, protocol, stats['mean_rgb'], split=eval_config.split or None,
      max_examples=eval_config.max_examples or None, collector=collector)
  result.update(workdirs=[os.path.abspath(w) for w in workdirs],
                steps=[step for *_, step in loaded],
                variants=[m.variant for m, *_ in loaded], num_classes=model.num_classes)
  name = eval_config.protocol.replace('+', '_')
  if collector is not None:
    title = (f"{'+'.join(result['variants'])} steps {result['steps']}, {name} at "
             f"Q={','.join(map(str, scales))}: top-1 error {100 * result['top1_error']:.2f}%")
    result['report'] = report.write_merged(collector, output_dir, f'eval_{name}',
                                           meta.get('class_names'), title)
  if output_dir and jax.process_index() == 0:
    path = os.path.join(output_dir, f'eval_{name}.json')
    files.write_file_atomically(path, json.dumps(result, indent=2))
    result['path'] = path
  return result


def format_table(results: Sequence[dict[str, Any]]) -> str:
  """Evaluation results as a markdown table; top-5 only for nets of more than 5 classes
  (with 5 or fewer, every class is in the top 5). Results stored before num_classes was
  recorded show it."""
  def has_top5(r):
    return r.get('num_classes', 6) > 5
  top5 = any(has_top5(r) for r in results)
  lines = ['| models | protocol | Q | views/image | images | top-1 err % |'
           + (' top-5 err % |' if top5 else ''), '|---|---|---|---|---|---|' + '---|' * top5]
  for r in results:
    line = (f"| {'+'.join(r.get('variants', ['?']))} | {r['protocol']} | "
            f"{','.join(map(str, r['scales']))} | {r['views_per_image']} | "
            f"{r['num_images']} | {100 * r['top1_error']:.2f} |")
    if top5:
      line += f" {100 * r['top5_error']:.2f} |" if has_top5(r) else ' - |'
    lines.append(line)
  return '\n'.join(lines)


class PredictSetup(NamedTuple):
  """What predict and explain_files need of a checkpoint, loaded once for both."""
  model: Any
  variables: Any
  class_names: list[str]
  mean_rgb: np.ndarray  # float32 [3].
  scale: int  # The test scale Q: the first of eval.scales, else the data's eval_scale.
  dense: bool  # Whole image (eval.protocol says 'dense'), else the centre crop.


def load_for_predict(eval_config, workdir: str, data_config=None) -> PredictSetup:
  """The checkpoint, its class names and preprocessing; data_config: by default the run's."""
  model, variables, meta, _ = pretrained.load_checkpoint(workdir, eval_config.checkpoint)
  if data_config is None:
    data_config = ml_collections.ConfigDict(meta['config']['data'])
  stats = statistics.rgb_statistics(data_config, os.path.abspath(workdir))
  scale = (list(eval_config.scales) or [data_config.eval_scale])[0]
  dense = 'dense' in eval_config.protocol
  check_protocol('dense' if dense else 'single', [scale], model.image_size)
  names = meta.get('class_names') or [str(i) for i in range(model.num_classes)]
  return PredictSetup(model, variables, names, np.asarray(stats['mean_rgb'], np.float32), scale,
                      dense)


def check_paths(paths: Sequence[str]):
  if not paths:
    raise errors.InvalidInput(
        'Give the image files to classify: launch.py --mode=predict '
        '--workdir=DIR IMAGE [IMAGE ...].')
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise errors.NotFound(f'No such image file: {missing[0]}')


def predict(eval_config, workdir: str, paths: Sequence[str], top_k: int = 5,
            data_config=None, setup: PredictSetup | None = None):
  """Top-k (class name, probability) per image file, with the checkpoint's preprocessing.

  Uses the dense protocol when eval.protocol says 'dense' (whole image and its flip),
  else the centre crop, at the first of eval.scales (default: the data's eval_scale).
  data_config: the data section (mean RGB, eval_scale); by default the run's stored one.
  setup: load_for_predict's, when the caller has loaded it already.
  """
  check_paths(paths)
  setup = setup or load_for_predict(eval_config, workdir, data_config)
  model, variables, names, mean_rgb, scale, dense = setup
  predictor = views.Predictor(model, variables, eval_config.batch_size)
  protocol, results = 'dense' if dense else 'single', []
  for start in range(0, len(paths), PREDICT_CHUNK):  # Dense: one program per shape bucket.
    chunk = paths[start:start + PREDICT_CHUNK]
    rescaled = [preprocessing.preprocess_for_dense(read_image(path), scale=scale,
                                                   mean_rgb=mean_rgb).numpy()
                for path in chunk]
    probs = views.posteriors_at_scale(predictor, rescaled, protocol, model.image_size,
                                           eval_config.flip)
    for path, p in zip(chunk, probs):
      best = np.argsort(-p)[:top_k]
      results.append((path, [(names[i], float(p[i])) for i in best]))
  return results


def _gradcam_view(setup: PredictSetup, view, explanation: explain.Explanation):
  maps, classes, probs = explain.gradcam(setup.model, setup.variables, view[None],
                                         layer=explanation.layer, dense=setup.dense)
  return maps, classes, probs, (
      f'Grad-CAM at {explanation.layer or explain.default_layer(setup.model)}')


def _saliency_view(setup: PredictSetup, view, explanation: explain.Explanation):
  maps, classes, probs = explain.saliency(setup.model, setup.variables, view[None],
                                          dense=setup.dense, samples=explanation.samples,
                                          noise=explanation.noise)
  samples = explanation.samples
  return maps, classes, probs, f'SmoothGrad ({samples} samples)' if samples else 'saliency'


EXPLAINERS = {'gradcam': _gradcam_view, 'saliency': _saliency_view}  # explain.METHODS.


def explain_files(setup: PredictSetup, paths: Sequence[str],
                  explanation: explain.Explanation, out_dir: str
                  ) -> list[tuple[str, str, str, float]]:
  """Writes out_dir/<image name>_<method>.png per image: the view predict classifies, and
  it under the Grad-CAM or saliency map of its top class (vgg_jax.evaluation.explain).

  setup: load_for_predict's. The view is predict's: the image rescaled to the first test
  scale Q, whole (dense protocols) or its centre crop. Returns (image, overlay, class
  name, probability) rows.
  """
  check_paths(paths)
  rows = []
  for path in paths:
    view = preprocessing.preprocess_for_dense(read_image(path), scale=setup.scale,
                                              mean_rgb=setup.mean_rgb).numpy()
    view = view if setup.dense else views.centre_crop(view, setup.model.image_size)
    maps, classes, probs, what = EXPLAINERS[explanation.method](setup, view, explanation)
    top, p = int(classes[0]), float(probs[0, int(classes[0])])
    name = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(out_dir, f'{name}_{explanation.method}.png')
    picture = np.clip(view + setup.mean_rgb, 0, 255).round().astype(np.uint8)
    explain.write_overlay(out, picture, np.asarray(maps[0]),
                          f'{os.path.basename(path)}: {setup.class_names[top]} ({p:.1%}), '
                          f'{what}')
    rows.append((path, out, setup.class_names[top], p))
  return rows


def read_image(path: str):
  """An image file decoded to uint8 [h, w, 3], turned upright by its EXIF orientation."""
  try:
    with stderr.dropping(scan.DECODER_NOISE):  # The error below says it, once.
      image = preprocessing.decode_image(tf.io.read_file(path), encoded=True)
    return preprocessing.apply_orientation(image, scan.read_orientation(path))
  except tf.errors.InvalidArgumentError as error:
    reason = scan.reason(error).rstrip('.')
    raise errors.InvalidInput(
        f'Could not decode image {path}: {reason}; replace it or leave it out.') from error
