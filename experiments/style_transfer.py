"""Neural style transfer (Gatys et al., CVPR 2016) by optimising an image's pixels.

  python -m experiments.style_transfer --weights=DIR --content=IMG --style=IMG \\
      --out=out.png [--size=256 --steps=300 --optimizer=adam|lbfgs --init=content|noise]

DIR is anything vgg_jax.pretrained.load reads: an imported VGG16/19 or a training run.
Images: the content image is resized so that its longer side is --size (aspect ratio
kept; its shorter side must stay at least 32 px); the style image is resized to the
content's height and width, as Gatys et al. do. The pixels, RGB 0..255, start from the
content image (or uniform noise). Adam clips them to [0, 255] after every step. L-BFGS
cannot (its line search hands the value and gradient at its unclipped point to the next
step): it minimises the loss of the clipped pixels, loss(clip(x)), and the result is
clipped once at the end, so the loss it reports is that of the image written. (Plain
unconstrained L-BFGS clipped at the end lost a good part of its progress to that clip.)

Loss, Gatys et al. Eq. 1-7: content_weight * sum_l 1/2 sum (F_l - P_l)^2 over the content
layers + style_weight * sum_l E_l / L over the L style layers + tv_weight * the mean
squared difference of neighbouring pixels. With --normalize (default) each layer's
activations are divided by their mean absolute value over the content and style images,
as the paper normalises VGG so that every filter's mean activation is 1: the weights then
mean the same for Keras- or torchvision-imported weights and for our own runs. The
targets (content features, style Gram matrices) are computed once, before the loop.
Writes --out (PNG) and beside it OUT_loss.png, the loss against the step on a log scale.
"""

import dataclasses
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image
from PIL import ImageOps

from vgg_jax import checkpointing
from vgg_jax import cli
from vgg_jax import features
from vgg_jax import models
from vgg_jax import pretrained
from vgg_jax.training import monitoring

OPTIMIZERS = ('adam', 'lbfgs')
INITS = ('content', 'noise')

_WEIGHTS = flags.DEFINE_string('weights', None, 'Checkpoint directory pretrained.load reads.')
_CONTENT = flags.DEFINE_string('content', None, 'The content image.')
_STYLE = flags.DEFINE_string('style', None, 'The style image.')
_OUT = flags.DEFINE_string('out', None, 'Output PNG; the loss curve goes to OUT_loss.png.')
_SIZE = flags.DEFINE_integer('size', 256, 'Longer side of the output, pixels (>= 32).')
_STEPS = flags.DEFINE_integer('steps', 300, 'Optimisation steps.')
_OPTIMIZER = flags.DEFINE_enum('optimizer', 'adam', OPTIMIZERS, 'Pixel optimiser.')
_LEARNING_RATE = flags.DEFINE_float(
    'learning_rate', 5.0, "Adam's step size in 0..255 pixel units (L-BFGS: its line search "
    'sets the step).')
_CONTENT_LAYERS = flags.DEFINE_list('content_layers', ['relu4_2'], 'Content layers.')
_STYLE_LAYERS = flags.DEFINE_list(
    'style_layers', ['relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1'], 'Style layers.')
_CONTENT_WEIGHT = flags.DEFINE_float('content_weight', 1e-3, 'alpha of Eq. 7.')
_STYLE_WEIGHT = flags.DEFINE_float('style_weight', 1.0, 'beta of Eq. 7.')
_TV_WEIGHT = flags.DEFINE_float('tv_weight', 0.0, 'Total-variation weight (not in the paper).')
_NORMALIZE = flags.DEFINE_bool('normalize', True,
                                'Divide each layer by its mean |activation| (see above).')
_INIT = flags.DEFINE_enum('init', 'content', INITS, 'Start from the content image or noise.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the noise start.')
_LOG_EVERY = flags.DEFINE_integer('log_every', 50, 'Steps between progress lines.')


@dataclasses.dataclass(frozen=True)
class Options:
  """How to optimise; the defaults are the flags'."""
  size: int = 256
  steps: int = 300
  optimizer: str = 'adam'
  learning_rate: float = 5.0
  content_layers: tuple[str, ...] = ('relu4_2',)
  style_layers: tuple[str, ...] = ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')
  content_weight: float = 1e-3
  style_weight: float = 1.0
  tv_weight: float = 0.0
  normalize: bool = True
  init: str = 'content'
  seed: int = 0
  log_every: int = 50

  @property
  def layers(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(self.content_layers + self.style_layers))

  def check(self):
    if self.size < models.MIN_IMAGE_SIZE:
      raise ValueError(f'--size={self.size} is below {models.MIN_IMAGE_SIZE}: VGG needs at '
                       f'least {models.MIN_IMAGE_SIZE}x{models.MIN_IMAGE_SIZE} images.')
    if self.steps < 1 or self.log_every < 1:
      raise ValueError(f'--steps and --log_every must be >= 1, got {self.steps}, '
                       f'{self.log_every}.')
    if self.optimizer not in OPTIMIZERS or self.init not in INITS:
      raise ValueError(f'optimizer must be one of {OPTIMIZERS} and init one of {INITS}, got '
                       f'{self.optimizer!r}, {self.init!r}.')
    if not (self.content_layers and self.style_layers):
      raise ValueError('Give at least one content layer and one style layer.')


def read_image(path: str) -> Image.Image:
  """The RGB image at path, upright (EXIF orientation applied)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No such image file: {path}')
  try:
    with Image.open(path) as image:
      return ImageOps.exif_transpose(image).convert('RGB')
  except OSError as error:  # PIL's UnidentifiedImageError and truncated files.
    raise ValueError(f'{path} is not a readable image: {error}') from error


def content_size(width: int, height: int, size: int) -> tuple[int, int]:
  """(width, height) with the longer side `size`; the shorter must stay >= 32."""
  scale = size / max(width, height)
  new = (max(1, round(width * scale)), max(1, round(height * scale)))
  if min(new) < models.MIN_IMAGE_SIZE:
    raise ValueError(f'The content image ({width}x{height}) resized to --size={size} on its '
                     f'longer side is {new[0]}x{new[1]}: VGG needs at least '
                     f'{models.MIN_IMAGE_SIZE} px on each side; raise --size.')
  return new


def load_images(content_path: str, style_path: str, size: int):
  """content, style: float32 [H, W, 3] RGB 0..255, both the content's resized size."""
  content, style = read_image(content_path), read_image(style_path)
  shape = content_size(*content.size, size)
  resize = lambda image: np.asarray(image.resize(shape, Image.Resampling.LANCZOS), np.float32)
  return resize(content), resize(style)


def compute_targets(model, variables, mean_rgb, content, style, options: Options):
  """{'scales', 'content': {layer: F [1, h, w, C]}, 'style': {layer: Gram [1, C, C]}}.

  One forward pass of both images. A layer name not in the model raises extract's
  ValueError, which lists the model's layers.
  """
  images = jnp.stack([content, style]) - mean_rgb
  feats = features.extract(model, variables, images, options.layers)
  # Mean |activation|: the mean of a ReLU layer, and a size for a conv (pre-ReLU) one.
  scales = {name: jnp.maximum(jnp.mean(jnp.abs(feats[name].astype(jnp.float32))), 1e-6)
            if options.normalize else jnp.float32(1.0) for name in options.layers}
  return {'mean_rgb': mean_rgb, 'scales': scales,
          'content': {name: feats[name][:1].astype(jnp.float32) / scales[name]
                      for name in options.content_layers},
          'style': {name: features.gram_matrix(feats[name][1:]) / scales[name]**2
                    for name in options.style_layers}}


def loss_terms(model, variables, image, targets, options: Options) -> dict[str, jax.Array]:
  """Weighted {'content', 'style', 'tv'} losses of image [H, W, 3] (RGB 0..255)."""
  scales = targets['scales']
  feats = features.extract(model, variables, (image - targets['mean_rgb'])[None],
                           options.layers)
  content = sum(0.5 * jnp.sum(jnp.square(feats[name].astype(jnp.float32) / scales[name]
                                         - targets['content'][name]))
                for name in options.content_layers)  # Eq. 1.
  grams = {name: features.gram_matrix(feats[name]) / scales[name]**2
           for name in options.style_layers}
  layer_weight = 1.0 / len(options.style_layers)  # w_l of Eq. 5.
  style = features.style_loss(grams, targets['style'],
                              {name: layer_weight for name in options.style_layers})[0]
  tv = (jnp.mean(jnp.square(image[1:] - image[:-1])) +
        jnp.mean(jnp.square(image[:, 1:] - image[:, :-1])))
  return {'content': options.content_weight * content, 'style': options.style_weight * style,
          'tv': options.tv_weight * tv}


def make_step(model, options: Options):
  """(optimizer, jitted step (image, opt_state, variables, targets) -> (image, state, loss))."""
  def value_fn(image, variables, targets):
    return sum(loss_terms(model, variables, image, targets, options).values())

  if options.optimizer == 'adam':
    optimizer = optax.adam(options.learning_rate)

    def step(image, opt_state, variables, targets):
      loss, grads = jax.value_and_grad(value_fn)(image, variables, targets)
      updates, opt_state = optimizer.update(grads, opt_state, image)
      return jnp.clip(optax.apply_updates(image, updates), 0.0, 255.0), opt_state, loss
  else:
    optimizer = optax.lbfgs()

    def step(image, opt_state, variables, targets):
      objective = lambda x: value_fn(jnp.clip(x, 0.0, 255.0), variables, targets)
      # The line search stores the value and gradient at the accepted point: reused here.
      loss, grads = optax.value_and_grad_from_state(objective)(image, state=opt_state)
      updates, opt_state = optimizer.update(grads, opt_state, image, value=loss, grad=grads,
                                            value_fn=objective)
      return optax.apply_updates(image, updates), opt_state, loss
  return optimizer, jax.jit(step)


def initial_image(content, options: Options):
  if options.init == 'content':
    return jnp.asarray(content)
  return jax.random.uniform(jax.random.key(options.seed), content.shape, jnp.float32, 0, 255)


def optimize(model, variables, targets, content, options: Options):
  """Runs the steps; returns (final image [H, W, 3] in [0, 255], losses [steps + 1], timing).

  losses[i] is the total loss after i steps; the last is that of the clipped result.
  """
  optimizer, step = make_step(model, options)
  terms_fn = jax.jit(lambda image, v, t: loss_terms(model, v, jnp.clip(image, 0.0, 255.0), t,
                                                     options))  # What the image will be.
  image = initial_image(content, options)
  # Strong dtypes: optax.lbfgs's initial line-search info is weakly typed, its updated
  # info is not, and the mismatch would compile the step a second time.
  opt_state = jax.tree_util.tree_map(lambda x: jnp.asarray(x, x.dtype),
                                     optimizer.init(image))
  start = time.perf_counter()
  log_progress(0, options, jax.device_get(terms_fn(image, variables, targets)), float('nan'))
  losses, timed_from, rate = [], None, float('nan')
  compile_start = time.perf_counter()
  for i in range(1, options.steps + 1):
    image, opt_state, loss = step(image, opt_state, variables, targets)
    losses.append(loss)
    if i == 1:  # Compilation is in the first step: the rate is timed from here on.
      loss.block_until_ready()
      timed_from = time.perf_counter()
      logging.info('Compiled and ran the first %s step in %.1fs.', options.optimizer,
                   timed_from - compile_start)
    if i % options.log_every == 0 or i == options.steps:
      terms = jax.device_get(terms_fn(image, variables, targets))
      rate = (i - 1) / (time.perf_counter() - timed_from) if i > 1 else float('nan')
      log_progress(i, options, terms, rate)
  image = jnp.clip(image, 0.0, 255.0)  # A no-op for Adam; L-BFGS's x is unconstrained.
  final = {k: float(v) for k, v in jax.device_get(terms_fn(image, variables, targets)).items()}
  losses = np.asarray(jax.device_get(losses) + [sum(final.values())], np.float64)
  return np.asarray(image), losses, {'final_terms': final, 'steps_per_second': rate,
                                     'optimize_seconds': time.perf_counter() - start}


def log_progress(step: int, options: Options, terms, rate: float):
  speed = (f'  {rate:.2f} steps/s  ETA '
           f'{monitoring.format_duration((options.steps - step) / rate)}' if rate > 0 else '')
  logging.info('step %d/%d  loss %.4g  content %.4g  style %.4g  tv %.3g%s', step,
               options.steps, sum(terms.values()), terms['content'], terms['style'],
               terms['tv'], speed)


def loss_plot_path(out: str) -> str:
  return os.path.splitext(out)[0] + '_loss.png'


def write_loss_plot(path: str, losses, title: str):
  """Total loss against the step (0 = the start), log scale."""
  # Optional: only this plot needs it. A bare Figure (no pyplot) renders with Agg, no display.
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  fig = figure.Figure(figsize=(6, 4))
  ax = fig.subplots()
  ax.plot(np.arange(len(losses)), losses)
  ax.set_yscale('log')
  ax.set_xlabel('step')
  ax.set_ylabel('total loss')
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3, which='both')
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def stylize(weights: str, content_path: str, style_path: str, out: str,
            options: Options = Options()) -> dict:
  """Writes out (PNG) and its loss plot; returns the losses, the timing and the paths."""
  start = time.perf_counter()
  options.check()
  content, style = load_images(content_path, style_path, options.size)
  if not os.path.isdir(weights):
    raise FileNotFoundError(f'No checkpoint directory at {weights}.')
  model, variables, mean_rgb = pretrained.load(weights)
  model.check_capture((1,) + content.shape, options.layers)  # Unknown layers: raise, untraced.
  targets = jax.jit(lambda v, c, s, m: compute_targets(model, v, m, c, s, options))(
      variables, content, style, mean_rgb)
  image, losses, timing = optimize(model, variables, targets, content, options)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  Image.fromarray(np.round(image).astype(np.uint8)).save(out, format='PNG')
  plot = loss_plot_path(out)
  write_loss_plot(plot, losses, f'{os.path.basename(content_path)} in the style of '
                  f'{os.path.basename(style_path)}: {options.steps} {options.optimizer} steps')
  return {'losses': losses, 'out': out, 'loss_plot': plot, 'height': image.shape[0],
          'width': image.shape[1], 'seconds': time.perf_counter() - start, **timing}


def main(argv):
  checkpointing.quiet_orbax_logs()
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not (_WEIGHTS.value and _CONTENT.value and _STYLE.value and _OUT.value):
    raise app.UsageError('--weights, --content, --style and --out are required.')
  options = Options(
      size=_SIZE.value, steps=_STEPS.value, optimizer=_OPTIMIZER.value,
      learning_rate=_LEARNING_RATE.value, content_layers=tuple(_CONTENT_LAYERS.value),
      style_layers=tuple(_STYLE_LAYERS.value), content_weight=_CONTENT_WEIGHT.value,
      style_weight=_STYLE_WEIGHT.value, tv_weight=_TV_WEIGHT.value,
      normalize=_NORMALIZE.value, init=_INIT.value, seed=_SEED.value,
      log_every=_LOG_EVERY.value)
  result = stylize(_WEIGHTS.value, _CONTENT.value, _STYLE.value, _OUT.value, options)
  losses, final = result['losses'], result['final_terms']
  print(f"Loss {losses[0]:.4g} at the start -> {losses[-1]:.4g} after {options.steps} "
        f"{options.optimizer} steps (content {final['content']:.4g}, style "
        f"{final['style']:.4g}, tv {final['tv']:.3g}); wall time {result['seconds']:.1f} s, "
        f"{result['steps_per_second']:.2f} steps/s after compilation. Wrote "
        f"{result['out']} ({result['width']}x{result['height']}) and {result['loss_plot']}.")


if __name__ == '__main__':
  cli.run(main)
