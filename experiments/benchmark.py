"""Times the project's real train step on synthetic batches, optionally beside PyTorch.

  python -m experiments.benchmark --variant=A --image_size=32 --batch_size=64 \\
      --num_classes=10 [--dtype=bfloat16] [--steps=N] [--conv_impl=auto|xla|matmul] \\
      [--pool_impl=auto|xla|reshape] [--vs_torch]

Batches are made on the device (no TensorFlow, no ml_collections: this runs where only
jax, flax, optax and orbax are installed). Prints one JSON line per timed run. With
--vs_torch an equivalent PyTorch VGG (same layers, SGD momentum 0.9 + weight decay 5e-4
on weights, dropout 0.5; channels_last and default layouts; autocast bfloat16 when
--dtype=bfloat16) is timed in the same process, alternating with JAX, and the JAX/torch
step-time ratio is printed per pair and as a median. On a GPU, torch runs with
cudnn.benchmark (it picks each convolution's fastest algorithm, as XLA's autotuner does).

Two utilisation figures: 'mfu' divides XLA's cost analysis of the compiled step by the
step time and the chip's dense peak (JAX only); 'mfu_model' divides the model's own count,
3 x 2 x forward MACs x batch (a backward pass costs two forwards), likewise, for both.
"""

import json
import resource
import statistics
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp

from vgg_jax import cli
from vgg_jax import models
from vgg_jax.models import layers
from vgg_jax import sharding
from vgg_jax.training import host_memory
from vgg_jax.training import monitoring
from vgg_jax.training import optim
from vgg_jax.training import steps

_VARIANT = flags.DEFINE_enum('variant', 'A', list(models.CONFIGS), 'Table 1 configuration.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32, 'Input height and width.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Global batch size.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 10, 'Classes.')
_WIDTH = flags.DEFINE_float('width', 1.0, 'Channel width multiplier.')
_FC_WIDTH = flags.DEFINE_integer('fc_width', 4096, 'fc6/fc7 width.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Computation dtype.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per run.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Alternating JAX/torch pairs with --vs_torch.')
_CONV_IMPL = flags.DEFINE_enum('conv_impl', 'auto', list(layers.CONV_IMPLS), 'JAX conv path.')
_POOL_IMPL = flags.DEFINE_enum('pool_impl', 'auto', list(layers.POOL_IMPLS), 'JAX pool path.')
_ACCUM = flags.DEFINE_integer('grad_accum_steps', 1, 'Micro-batches per step.')
flags.adopt_module_key_flags(host_memory)  # Its --reuse_host_memory, in --help.
_VS_TORCH = flags.DEFINE_bool('vs_torch', False, 'Also time an equivalent PyTorch VGG.')
_TORCH_COMPILE = flags.DEFINE_bool('torch_compile', False, 'torch.compile the torch model.')


# base.optimizer_config() with a cosine schedule, typed: this path runs without
# ml_collections, which base.py needs.
OPTIMIZER = optim.OptimizerConfig(
    learning_rate=1e-2, momentum=0.9, weight_decay=5e-4, decay_biases=False,
    schedule='cosine', plateau_factor=0.1, plateau_patience=2, plateau_max_decays=3,
    plateau_min_delta=0.0, step_decay_epochs=(), freeze_conv_base=False,
    unfreeze_last_stage=False)


_HOST_MEMORY_REUSED = []  # main() appends whether reuse_freed_memory() took effect.


def page_faults() -> int:
  """Minor page faults of this process so far (fresh host memory touched)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(step, steps):
  """Wall time of each of `steps` calls of step(); the page faults they took, per step."""
  times, faults = [], page_faults()
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times, (page_faults() - faults) / max(steps, 1)


def model_flops() -> int:
  """FLOPs of one training step by the model's count: 3 x 2 x forward MACs x batch."""
  macs = models.forward_macs(_VARIANT.value, _IMAGE_SIZE.value, _NUM_CLASSES.value,
                             _WIDTH.value, _FC_WIDTH.value)
  return 6 * macs * _BATCH_SIZE.value


def summarize(step_times, compile_s, flops, peak, memory, extra):
  """flops: XLA's count for one device's step (None for torch); peak: one device's."""
  median = statistics.median(step_times)
  devices = extra.get('devices', 1)
  return {**extra, 'host_memory_reused': any(_HOST_MEMORY_REUSED),
          'compile_s': round(compile_s, 3), 'median_step_s': round(median, 6),
          'min_step_s': round(min(step_times), 6), 'max_step_s': round(max(step_times), 6),
          'images_per_second': round(_BATCH_SIZE.value / median, 2),
          'mfu': round(flops / median / peak, 4) if flops and peak else None,
          'mfu_model': round(model_flops() / devices / median / peak, 4) if peak else None,
          'peak_memory_bytes': memory}


class JaxRun:
  """The project's jit-compiled train step over all devices, on device-made batches."""

  def __init__(self):
    self.model = models.VGG(variant=_VARIANT.value, num_classes=_NUM_CLASSES.value,
                            width=_WIDTH.value, fc_width=_FC_WIDTH.value,
                            image_size=_IMAGE_SIZE.value, conv_impl=_CONV_IMPL.value,
                            pool_impl=_POOL_IMPL.value,
                            dtype=jnp.bfloat16 if _DTYPE.value == 'bfloat16' else jnp.float32)
    mesh = sharding.create_mesh()
    sharding.check_batch_size(_BATCH_SIZE.value, mesh.size, _ACCUM.value, name='batch_size')
    tx = optim.create_optimizer(OPTIMIZER, 100, 10_000)
    self.state = jax.jit(lambda r: steps.create_train_state(self.model, tx, r),
                         out_shardings=sharding.replicated(mesh))(jax.random.key(0))
    size = _IMAGE_SIZE.value
    self.batch = jax.jit(lambda r: {
        'images': jax.random.normal(r, (_BATCH_SIZE.value, size, size, 3)) * 60,
        'labels': jax.random.randint(r, (_BATCH_SIZE.value,), 0, _NUM_CLASSES.value)},
        out_shardings=sharding.batch_sharding(mesh))(jax.random.key(1))
    self.rng = jax.random.key(2)
    start = time.perf_counter()
    self.step = steps.jit_train_step(self.model, tx, mesh, _ACCUM.value).lower(
        self.state, self.batch, self.rng).compile()
    self.compile_s = time.perf_counter() - start
    self.flops = monitoring.step_flops(self.step)
    self.device = jax.devices()[0]
    self.peak = monitoring.peak_flops(self.device.device_kind)
    self.run(_WARMUP.value)

  def run(self, steps):
    def step():
      self.state, metrics = self.step(self.state, self.batch, self.rng)
      jax.block_until_ready(metrics['loss'])
    times, self.faults_per_step = timed(step, steps)
    return times

  def result(self, times):
    stats = self.device.memory_stats() or {}
    return summarize(times, self.compile_s, self.flops, self.peak,
                     stats.get('peak_bytes_in_use'), {
                         'framework': 'jax', 'backend': jax.default_backend(),
                         'device_kind': self.device.device_kind, 'devices': jax.device_count(),
                         'variant': _VARIANT.value, 'image_size': _IMAGE_SIZE.value,
                         'batch_size': _BATCH_SIZE.value, 'dtype': _DTYPE.value,
                         'conv_impl': layers.resolve_conv_impl(_CONV_IMPL.value),
                         'pool_impl': layers.resolve_pool_impl(_POOL_IMPL.value,
                                                               _CONV_IMPL.value),
                         'width': _WIDTH.value,
                         'page_faults_per_step': round(self.faults_per_step)})


class TorchRun:
  """The same VGG in PyTorch: layers from models.CONFIGS, SGD momentum + weight decay."""

  def __init__(self, torch, channels_last: bool):
    nn = torch.nn
    self.torch, self.channels_last = torch, channels_last
    self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if self.device.type == 'cuda':
      torch.backends.cudnn.benchmark = True  # Autotuned convolutions, as XLA's.
    modules, in_channels, size = [], 3, _IMAGE_SIZE.value
    for layer in models.layer_table(_VARIANT.value, width=_WIDTH.value, fc_width=_FC_WIDTH.value,
                                    num_classes=_NUM_CLASSES.value):
      if layer.kind == 'conv':
        k = layer.kernel_size
        modules.append(nn.Conv2d(in_channels, layer.features, k, padding=k // 2))
      elif layer.kind == 'relu':
        modules.append(nn.ReLU())
      elif layer.kind == 'lrn':  # torch divides alpha by n: alpha = n * 1e-4 is AlexNet's.
        modules.append(nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0))
      elif layer.kind == 'pool':
        modules.append(nn.MaxPool2d(2))
        size //= 2
      elif layer.kind == 'dropout':
        modules.append(nn.Dropout(0.5))
      elif layer.kind == 'fc':
        modules += [nn.Flatten(), nn.Linear(in_channels * size * size, layer.features)]
      else:
        modules.append(nn.Linear(in_channels, layer.features))
      in_channels = layer.features or in_channels
    self.model = nn.Sequential(*modules).to(self.device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    self.model = self.model.to(memory_format=memory_format)
    weights = [p for n, p in self.model.named_parameters() if n.endswith('weight')]
    biases = [p for n, p in self.model.named_parameters() if n.endswith('bias')]
    self.optimizer = torch.optim.SGD([{'params': weights, 'weight_decay': 5e-4},
                                      {'params': biases, 'weight_decay': 0.0}],
                                     lr=1e-2, momentum=0.9)
    self.images = (torch.randn(_BATCH_SIZE.value, 3, _IMAGE_SIZE.value, _IMAGE_SIZE.value,
                               device=self.device) * 60).to(memory_format=memory_format)
    self.labels = torch.randint(0, _NUM_CLASSES.value, (_BATCH_SIZE.value,), device=self.device)
    self.forward = torch.compile(self.model) if _TORCH_COMPILE.value else self.model
    start = time.perf_counter()
    self.run(1)  # Includes torch.compile's compilation when asked.
    self.compile_s = time.perf_counter() - start
    self.run(_WARMUP.value)

  def run(self, steps):
    torch = self.torch
    autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=_DTYPE.value == 'bfloat16')
    def step():
      self.optimizer.zero_grad(set_to_none=True)
      with autocast:
        loss = torch.nn.functional.cross_entropy(self.forward(self.images), self.labels)
      loss.backward()
      self.optimizer.step()
      if self.device.type == 'cuda':
        torch.cuda.synchronize()
      else:
        loss.item()
    times, self.faults_per_step = timed(step, steps)
    return times

  def result(self, times):
    torch = self.torch
    memory = torch.cuda.max_memory_allocated() if self.device.type == 'cuda' else None
    kind = torch.cuda.get_device_name() if self.device.type == 'cuda' else 'cpu'
    return summarize(times, self.compile_s, None, monitoring.peak_flops(kind), memory, {
        'framework': 'torch', 'backend': self.device.type, 'device_kind': kind,
        'torch_version': torch.__version__, 'variant': _VARIANT.value,
        'image_size': _IMAGE_SIZE.value, 'batch_size': _BATCH_SIZE.value,
        'dtype': _DTYPE.value, 'layout': 'channels_last' if self.channels_last else 'default',
        'torch_compile': _TORCH_COMPILE.value, 'width': _WIDTH.value,
        'page_faults_per_step': round(self.faults_per_step)})


def main(argv):
  del argv
  _HOST_MEMORY_REUSED.append(host_memory.REUSE_HOST_MEMORY.value and
                             host_memory.reuse_freed_memory())
  torch = None
  if _VS_TORCH.value:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      print('--vs_torch needs PyTorch, which is not installed here.', file=sys.stderr)
      sys.exit(2)
  jax_run = JaxRun()
  if torch is None:
    print(json.dumps(jax_run.result(jax_run.run(_STEPS.value))))
    return
  torch_runs = [TorchRun(torch, channels_last) for channels_last in (True, False)]
  for run in (jax_run, *torch_runs):  # One untimed round in turn: the shared heap settles.
    run.run(_WARMUP.value)
  ratios = {run.channels_last: [] for run in torch_runs}
  for _ in range(_REPEATS.value):  # Alternate, so drifts hit both frameworks alike.
    jax_result = jax_run.result(jax_run.run(_STEPS.value))
    print(json.dumps(jax_result))
    for run in torch_runs:
      torch_result = run.result(run.run(_STEPS.value))
      ratio = jax_result['median_step_s'] / torch_result['median_step_s']
      ratios[run.channels_last].append(ratio)
      print(json.dumps({**torch_result, 'jax_over_torch': round(ratio, 3)}))
  for run in torch_runs:
    layout = 'channels_last' if run.channels_last else 'default'
    print(json.dumps({'summary': f'JAX/torch step time vs torch {layout}',
                      'ratios': [round(r, 3) for r in ratios[run.channels_last]],
                      'median_ratio': round(statistics.median(ratios[run.channels_last]), 3)}))


if __name__ == '__main__':
  cli.run(main)
