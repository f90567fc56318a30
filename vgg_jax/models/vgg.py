"""The VGG family of Simonyan & Zisserman (ICLR 2015), Table 1, as one Flax module.

Every step of the forward pass is described once, as data (layer_table: name, kind, what
it owns); the logits, dense evaluation, feature capture, running on from a layer, the
feature and BatchNorm names and the weight-layer names are all read off that one list.
"""

from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import errors
from vgg_jax.models import layers

# Table 1: the kernel size of each conv layer, per stage (1 = C's 1x1 convs).
CONFIGS = {
    'A': ((3,), (3,), (3, 3), (3, 3), (3, 3)),
    'A-LRN': ((3,), (3,), (3, 3), (3, 3), (3, 3)),
    'B': ((3, 3), (3, 3), (3, 3), (3, 3), (3, 3)),
    'C': ((3, 3), (3, 3), (3, 3, 1), (3, 3, 1), (3, 3, 1)),
    'D': ((3, 3), (3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
    'E': ((3, 3), (3, 3), (3, 3, 3, 3), (3, 3, 3, 3), (3, 3, 3, 3)),
}
STAGE_CHANNELS = (64, 128, 256, 512, 512)  # Table 1, conv width per stage.
FC_WIDTH = 4096  # Table 1, fc6 and fc7.
LRN_VARIANTS = ('A-LRN',)  # LRN after conv1_1's ReLU.
NUM_POOLS = len(STAGE_CHANNELS)  # One 2x2/2 max-pool after each stage.
MIN_IMAGE_SIZE = 2**NUM_POOLS  # 32: the smallest input five pools leave a pixel of.
HEADS = ('fc', 'small')  # fc6-fc8 of Table 1, or a small transfer-learning head.
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5  # torchvision's BatchNorm2d (its momentum 0.1).
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
WEIGHT_KINDS = ('conv', 'fc', 'dense')  # Layers with a kernel and a bias.

class Layer(NamedTuple):
  """One step of the forward pass, named as in the original release.

  kind: 'conv' (k x k, 'same'), 'bn' (BatchNorm), 'relu', 'lrn', 'pool' (2x2/2), 'fc'
  (the first FC layer: dense over the conv map, or the same weights as a conv), 'dense',
  'dropout' (not a feature: it is the identity at test time).
  """
  name: str
  kind: str
  features: int = 0  # Output channels of a weight layer.
  kernel_size: int = 0  # conv: k.
  stage: int = 0  # conv: 1..5, the block it belongs to (Table 1's column groups).


def stage_channels(width: float) -> tuple[int, ...]:
  """Conv channels per stage after the `width` multiplier (at least 1 each)."""
  return tuple(max(1, int(round(c * width))) for c in STAGE_CHANNELS)


def layer_table(variant: str, batch_norm: bool = False, head: str = 'fc', width: float = 1.0,
                fc_width: int = FC_WIDTH, head_width: int = 256,
                num_classes: int = 1000) -> tuple[Layer, ...]:
  """Every step of VGG `variant`'s forward pass in order (Table 1, Sec. 2.1 and 3.1).

  conv1_1, (bn1_1,) relu1_1, (norm1 for A-LRN,) pool1, ..., pool5, then fc6, relu6, drop6,
  fc7, relu7, drop7, fc8 (head='small': head1, relu_head1, drop_head1, head2).
  """
  table = []
  for stage, (kernel_sizes, channels) in enumerate(
      zip(CONFIGS[variant], stage_channels(width)), start=1):
    for i, k in enumerate(kernel_sizes, start=1):
      table.append(Layer(f'conv{stage}_{i}', 'conv', channels, k, stage))
      if batch_norm:
        table.append(Layer(f'bn{stage}_{i}', 'bn'))
      table.append(Layer(f'relu{stage}_{i}', 'relu'))
    if stage == 1 and variant in LRN_VARIANTS:  # Sec. 2.1: LRN after A-LRN's first ReLU.
      table.append(Layer('norm1', 'lrn'))
    table.append(Layer(f'pool{stage}', 'pool'))
  if head == 'small':
    return tuple(table) + (Layer('head1', 'fc', head_width), Layer('relu_head1', 'relu'),
                           Layer('drop_head1', 'dropout'), Layer('head2', 'dense', num_classes))
  return tuple(table) + (
      Layer('fc6', 'fc', fc_width), Layer('relu6', 'relu'), Layer('drop6', 'dropout'),
      Layer('fc7', 'dense', fc_width), Layer('relu7', 'relu'), Layer('drop7', 'dropout'),
      Layer('fc8', 'dense', num_classes))


def layer_names(variant: str) -> tuple[str, ...]:
  """Weight-layer names in order, as in the original release: conv1_1 .. fc8."""
  return tuple(layer.name for layer in layer_table(variant) if layer.kind in WEIGHT_KINDS)


def feature_names(variant: str, batch_norm: bool = False, head: str = 'fc') -> tuple[str, ...]:
  """Every named activation of the net in order: layer_table without the dropouts."""
  return tuple(layer.name for layer in layer_table(variant, batch_norm, head)
               if layer.kind != 'dropout')


def norm_names(variant: str) -> dict[str, str]:
  """{conv name: the name of the BatchNorm after it} in the batch-norm net (vgg*_bn)."""
  table = layer_table(variant, batch_norm=True)
  return {conv.name: norm.name for conv, norm in zip(table, table[1:]) if norm.kind == 'bn'}


def positive_int(value) -> bool:
  """Whether value is an int (Python or numpy, not a bool) above 0."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


# VGG's fields: (rule, what a good value is), each checked once, by check_fields.
FIELD_RULES = {
    'variant': (lambda v: v in CONFIGS, f'must be one of {list(CONFIGS)}'),
    'num_classes': (positive_int, 'must be a positive integer'),
    'width': (lambda v: v > 0, 'must be > 0'),
    'fc_width': (positive_int, 'must be a positive integer'),
    'head_width': (positive_int, 'must be a positive integer'),
    'dropout_rate': (lambda v: 0 <= v < 1, 'must be in [0, 1)'),
    'image_size': (lambda v: v >= MIN_IMAGE_SIZE,
                   f'must be at least {MIN_IMAGE_SIZE} (five 2x2 pools)'),
    'kernel_init': (lambda v: v in layers.KERNEL_INITS, f'must be one of {layers.KERNEL_INITS}'),
    'head': (lambda v: v in HEADS, f'must be one of {HEADS}'),
    'conv_impl': (lambda v: v in layers.CONV_IMPLS, f'must be one of {layers.CONV_IMPLS}'),
    'pool_impl': (lambda v: v in layers.POOL_IMPLS, f'must be one of {layers.POOL_IMPLS}'),
    'batch_norm': (lambda v: isinstance(v, (bool, np.bool_)), 'must be True or False'),
}


def check_fields(fields: Mapping[str, Any], rules=None):
  """Raises InvalidInput (a ValueError) 'name=value: want.' for the first field that breaks
  its rule; rules: {name: (ok, want)}, FIELD_RULES by default; fields without one pass."""
  rules = FIELD_RULES if rules is None else rules
  for name, value in fields.items():
    if name not in rules:
      continue
    ok, want = rules[name]
    try:
      good = ok(value)
    except TypeError:
      good = False
    if not good:
      raise errors.InvalidInput(f'{name}={value!r}: {want}.')


def _inside(valid_sizes, height: int, width: int):
  """[B, height, width, 1] bool: True at the rows and columns below each (height, width)."""
  rows = jnp.arange(height)[None, :] < valid_sizes[:, 0:1]
  cols = jnp.arange(width)[None, :] < valid_sizes[:, 1:2]
  return (rows[:, :, None] & cols[:, None, :])[..., None]


def _check_nhwc(shape, rgb: bool = True):
  if len(shape) != 4 or (rgb and shape[-1] != 3):
    raise ValueError(f'images must be [B, H, W, 3] (NHWC), got shape {tuple(shape)}.')


class VGG(nn.Module):
  """VGG net `variant` of Table 1; one entry per use, each over one private forward pass:

    model.apply(variables, images)                         logits [B, num_classes]
    model.apply(variables, images, method=VGG.dense)       Sec. 3.2 dense scores
    model.apply(variables, images, names, method=VGG.features)   {name: activation}
    model.apply(variables, acts, layer, method=VGG.run_from)     logits from a layer

  images [B, H, W, 3] NHWC float. image_size is the training crop size: it fixes fc6's
  window (image_size / 32). head='small' replaces fc6-fc8 by the common transfer-learning
  head: head1 (Dense head_width over the flattened conv map), ReLU, dropout, head2 (Dense
  num_classes). batch_norm=True: BatchNorm after every conv, before its ReLU, as
  torchvision's vgg*_bn (not in the paper); its running statistics live in the
  'batch_stats' collection. frozen_norms=('bn1_1', ...): those BatchNorm layers normalise
  with their running statistics in training too and never update them, as a frozen conv
  base needs.
  """
  variant: str = 'D'
  num_classes: int = 1000
  width: float = 1.0  # Multiplier of Table 1's conv widths 64..512.
  fc_width: int = FC_WIDTH
  dropout_rate: float = 0.5  # Sec. 3.1, after fc6 and fc7.
  dtype: Any = jnp.float32  # Computation dtype; parameters stay float32.
  kernel_init: str = 'glorot'
  image_size: int = 224
  head: str = 'fc'
  head_width: int = 256
  conv_impl: str = 'auto'  # 'xla', 'matmul' (fast on CPU), 'auto': by backend.
  pool_impl: str = 'auto'  # 'xla', 'reshape' (bias and ReLU fused), 'auto': by conv_impl.
  batch_norm: bool = False
  frozen_norms: tuple[str, ...] = ()

  def __post_init__(self):
    check_fields({name: getattr(self, name) for name in FIELD_RULES})
    norms = [layer.name for layer in self.layer_table if layer.kind == 'bn']
    unknown = [n for n in self.frozen_norms if n not in norms]
    if not isinstance(self.frozen_norms, tuple) or unknown:
      raise ValueError(f'frozen_norms must be a tuple of this net\'s BatchNorm layers '
                       f'({", ".join(norms) or "none: batch_norm=False"}); got '
                       f'{self.frozen_norms!r}.')
    super().__post_init__()

  @property
  def layer_table(self) -> tuple[Layer, ...]:
    return layer_table(self.variant, self.batch_norm, self.head, self.width, self.fc_width,
                       self.head_width, self.num_classes)

  @property
  def feature_names(self) -> tuple[str, ...]:
    return feature_names(self.variant, self.batch_norm, self.head)

  def _check_input(self, images, dense):
    _check_nhwc(images.shape)
    height, width = images.shape[1:3]
    if dense and min(height, width) < self.image_size:
      raise ValueError(f'Dense evaluation needs images of at least image_size={self.image_size} '
                       f'on each side, got {height}x{width}.')
    if not dense and (height, width) != (self.image_size, self.image_size):
      raise ValueError(f'images are {height}x{width} but the FC head was built for '
                       f'image_size={self.image_size}: pass {self.image_size}x'
                       f'{self.image_size} crops, set image_size, or use dense=True.')

  def check_names(self, names) -> tuple[str, ...]:
    """Feature names (one or several), checked against this variant's."""
    names, valid = ((names,) if isinstance(names, str) else tuple(names)), self.feature_names
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
      raise ValueError(f'Layer(s) {unknown} are not in VGG-{self.variant}'
                       f'{"_bn" if self.batch_norm else ""}; its layers are: {", ".join(valid)}.')
    return names

  def check_capture(self, images_shape, capture, after: str | None = None) -> tuple[str, ...]:
    """The requested feature names, checked against this variant, the size and `after`."""
    capture = self.check_names(capture)
    first = 0 if after is None else self._deepest(self.check_names(after)) + 1
    _check_nhwc(images_shape, rgb=after is None)  # Activations have any number of channels.
    if earlier := [name for name in capture if self._deepest((name,)) < first]:
      raise ValueError(f'Layer(s) {earlier} lie before {after}, where the pass starts.')
    smallest, deepest = min(images_shape[1:3]), self._deepest(capture)
    # Each pool up to the deepest layer halves the map: it must keep a pixel.
    least = 2**sum(layer.kind == 'pool' for layer in self.layer_table[first:deepest + 1])
    if smallest < least:
      raise ValueError(f'Layer {self.layer_table[deepest].name} needs images of at least '
                       f'{least}x{least}, got {images_shape[1]}x{images_shape[2]}.')
    if deepest >= self.head_start and smallest < self.image_size:
      raise ValueError(f'Layer {self.layer_table[deepest].name} (FC) needs images of at '
                       f'least image_size={self.image_size} on each side, got '
                       f'{images_shape[1]}x{images_shape[2]}.')
    return capture

  @property
  def head_start(self) -> int:
    """Index in layer_table of the head's first layer (fc6, or the small head's head1)."""
    return next(i for i, layer in enumerate(self.layer_table) if layer.kind in ('fc', 'dense'))

  def _deepest(self, names) -> int:
    """Index in layer_table of the last of names."""
    return max(i for i, layer in enumerate(self.layer_table) if layer.name in names)

  def groups(self, last: int | None = None, fuse: bool = True,
             first: int = 0) -> list[tuple[Layer, ...]]:
    """layer_table[first:last + 1] (to the end by default) as the forward pass runs it:
    each group a layer, or with fuse a conv followed by its ReLU and a pool (bias, ReLU
    and pool fused in one call)."""
    last = len(self.layer_table) - 1 if last is None else last
    table, out, i = self.layer_table[first:last + 1], [], 0
    while i < len(table):
      kinds = tuple(layer.kind for layer in table[i:i + 3])
      size = 3 if fuse and kinds == ('conv', 'relu', 'pool') else 1
      out.append(table[i:i + size])
      i += size
    return out

  def __call__(self, images, train: bool = False):
    """Logits [B, num_classes] float32 of image_size x image_size images [B, H, W, 3]."""
    self._check_input(images, dense=False)
    return self._forward(images, train, False, self.groups()).astype(jnp.float32)

  def dense(self, images, valid_sizes=None):
    """Sec. 3.2 dense evaluation: the FC layers as convolutions over images [B, H, W, 3]
    at least image_size on each side, the class-score map averaged: [B, num_classes].

    valid_sizes: [B, 2] int, each image's (height, width) inside images, which pad it at
    the bottom and right. Every conv then sees zeros beyond the image, as 'same' padding
    does at a true border; each 2x2 pool floors the valid size, as it floors the map; the
    scores are averaged over the image's own positions. The padding changes no output;
    each valid size must be at least image_size.
    """
    self._check_input(images, dense=True)
    x = self._forward(images, False, True, self.groups(), valid_sizes=valid_sizes)
    if valid_sizes is None:  # The class-score map [B, h, w, classes] averaged over space.
      return x.mean(axis=(1, 2)).astype(jnp.float32)
    # Five pools floor the valid size to valid // 32; fc6 is a VALID window conv.
    valid = valid_sizes // MIN_IMAGE_SIZE - self.image_size // MIN_IMAGE_SIZE + 1
    inside = _inside(valid, x.shape[1], x.shape[2])
    total = jnp.sum(jnp.where(inside, x.astype(jnp.float32), 0.0), axis=(1, 2))
    return total / jnp.prod(valid, axis=1, keepdims=True).astype(jnp.float32)

  def features(self, images, names, after: str | None = None) -> dict[str, Any]:
    """{name: activation [B, h, w, C]} of feature_names `names` (one or several).

    Runs only as far as the deepest of them, each layer unfused; FC layers run as
    convolutions (fc6 as a window x window conv), on images the pools up to the deepest
    layer leave a pixel of (16 for relu5_3, 32 for pool5; at least image_size when an FC
    layer is asked for). after: images are that layer's activations (or what stands in
    for them: DISTS's L2 pooling for pool1), and the pass runs on from the next layer.
    """
    wanted = self.check_capture(images.shape, names, after)
    first = 0 if after is None else self._deepest((after,)) + 1
    groups = self.groups(self._deepest(wanted), fuse=False, first=first)
    return self._forward(images, False, True, groups, wanted=wanted)

  def run_from(self, activations, layer: str, dense: bool = False):
    """Logits [B, num_classes] float32 from `layer`'s activations (as features gives
    them), running on from the next layer: Grad-CAM's second half."""
    first = self._deepest(self.check_names(layer)) + 1
    x = self._forward(activations, False, dense, self.groups(first=first))
    return (x.mean(axis=(1, 2)) if dense else x).astype(jnp.float32)

  @nn.compact
  def _forward(self, images, train: bool, dense: bool, groups, wanted=(), valid_sizes=None):
    """The one forward pass over `groups`: the last group's output, or {name: output} of
    the groups ending in a `wanted` layer. valid_sizes: see dense()."""
    x, out, valid = images.astype(self.dtype), {}, valid_sizes
    for group in groups:
      if valid is not None and group[0].kind == 'conv':
        x = jnp.where(_inside(valid, x.shape[1], x.shape[2]), x, jnp.zeros((), x.dtype))
      x = self._run(group, x, train, dense)
      if valid is not None and group[-1].kind == 'pool':
        valid = valid // 2
      if group[-1].name in wanted:
        out[group[-1].name] = x
    return out if wanted else x

  def _run(self, group: tuple[Layer, ...], x, train: bool, dense: bool):
    """One group of the forward pass: a layer, or a stage's fused conv, ReLU and pool."""
    layer = group[0]
    init = layers.kernel_initializer(self.kernel_init)
    pool_impl = layers.resolve_pool_impl(self.pool_impl, self.conv_impl)
    if layer.kind == 'conv':
      conv = layers.Conv(layer.features, layer.kernel_size,
                         layers.resolve_conv_impl(self.conv_impl), dtype=self.dtype,
                         kernel_init=init, name=layer.name)
      return conv.bias_relu_max_pool(x, pool_impl) if len(group) == 3 else conv(x)
    if layer.kind == 'bn':
      frozen = layer.name in self.frozen_norms
      return nn.BatchNorm(use_running_average=not train or frozen, momentum=BN_MOMENTUM,
                          epsilon=BN_EPSILON, dtype=self.dtype, name=layer.name)(x)
    if layer.kind == 'relu':
      return nn.relu(x)
    if layer.kind == 'lrn':
      return layers.local_response_norm(x)
    if layer.kind == 'pool':
      return layers.max_pool_2x2(x, pool_impl)
    if layer.kind == 'fc':
      return layers.Fc6(layer.features, self.image_size // MIN_IMAGE_SIZE, dtype=self.dtype,
                        kernel_init=init, name=layer.name)(x, dense)
    if layer.kind == 'dropout':  # Auto-named Dropout_0, _1: their rng streams stay put.
      return nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(layer.features, dtype=self.dtype, kernel_init=init, name=layer.name)(x)


def create_model(model_config, num_classes: int | None = None) -> VGG:
  """VGG from config.model's fields (dtype given by name); num_classes overrides its own."""
  fields = dict(model_config.items())
  if fields['dtype'] not in DTYPES:
    raise errors.InvalidInput(f"config.model.dtype={fields['dtype']!r}: not in {list(DTYPES)}.")
  fields['dtype'] = DTYPES[fields['dtype']]
  if num_classes is not None:
    fields['num_classes'] = num_classes
  return VGG(**fields)


def init_variables(model: VGG, rng) -> dict[str, Any]:
  """Fresh {'params'} (and 'batch_stats' if batch_norm) for image_size inputs."""
  size = model.image_size  # Compiled whole: run op by op, every primitive compiles alone.
  return dict(jax.jit(model.init)(rng, jnp.zeros((1, size, size, 3), jnp.float32)))


def count_params(params) -> int:
  """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


def param_shapes(model: VGG, image_size: int | None = None):
  """Parameter ShapeDtypeStructs via jax.eval_shape: nothing is allocated."""
  size = image_size or model.image_size
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)['params']


def forward_macs(variant: str, image_size: int = 224, num_classes: int = 1000,
                 width: float = 1.0, fc_width: int = FC_WIDTH) -> int:
  """Multiply-accumulates of one forward pass, counted from the layer shapes.

  Counts the conv and FC weight layers only (ReLU, pooling and LRN are not MACs).
  """
  macs, size, in_channels = 0, image_size, 3
  for layer in layer_table(variant, width=width, fc_width=fc_width, num_classes=num_classes):
    if layer.kind == 'conv':
      macs += size * size * layer.kernel_size**2 * in_channels * layer.features
    elif layer.kind == 'pool':
      size //= 2
    elif layer.kind in ('fc', 'dense'):
      macs += size * size * in_channels * layer.features
      size = 1  # fc6 covers the whole conv map: fc7, fc8 see one position.
    in_channels = layer.features or in_channels
  return macs
