"""vgg_jax entry point: absl flags -> config -> the chosen mode.

  python launch.py --workdir=DIR [--config=experiments/configs/NAME.py[:ARG]] \\
      [--config.FIELD=VALUE ...] [--mode=train|evaluate|predict|table] [IMAGE ...]

Without --config it trains a narrow VGG-D on the embedded digits set. Running the same
command on the same DIR resumes. evaluate and predict take every setting from DIR's
stored config; only the --config.FIELD values given on the command line override it.
"""

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from vgg_jax import cli
from vgg_jax.training import host_memory

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(_HERE, 'experiments', 'configs', 'digits.py'),
    'Experiment config file (a get_config() returning a ConfigDict).', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints and metrics. evaluate and predict also take '
    "named weights ('vgg16', ...: python -m vgg_jax.pretrained --list), fetched once.")
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'evaluate', 'predict', 'table'],
    "'train' (or resume); 'evaluate' runs config.eval's protocol on DIR's checkpoint; "
    "'predict' prints the top-5 classes of the image files given as arguments, and with "
    "--explain draws where the net looks (both with "
    "DIR's stored config, overridden by the --config.FIELD flags given); 'table' prints "
    'Table 2 reproduced.')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'none', ['none', 'auto', 'explicit'],
    "Multi-process JAX: 'auto' lets jax.distributed.initialize detect TPU/SLURM/etc.; "
    "'explicit' uses --coordinator_address, --num_processes and --process_id.")
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process: 0..num_processes-1.')
flags.adopt_module_key_flags(host_memory)  # Its --reuse_host_memory, in --help.
_EXPLAIN = flags.DEFINE_enum(
    'explain', None, ['gradcam', 'saliency'],
    "predict: also write, per image, its top class's Grad-CAM or saliency map over it.")
_EXPLAIN_DIR = flags.DEFINE_string('explain_dir', 'explain', 'Where --explain writes its PNGs.')
_EXPLAIN_LAYER = flags.DEFINE_string(
    'explain_layer', None, 'Grad-CAM layer (default: the last ReLU of the last conv stage).')
_SMOOTHGRAD = flags.DEFINE_integer(
    'smoothgrad', 0, 'Saliency: average the gradient over this many noisy copies (SmoothGrad).')
_SMOOTHGRAD_NOISE = flags.DEFINE_float(
    'smoothgrad_noise', 0.15, "SmoothGrad's noise std, as a fraction of the image's range.")
_CPU_COLLECTIVES = flags.DEFINE_enum(
    'cpu_collectives', None, ['gloo', 'mpi'],
    'Collectives for multi-process runs on CPU devices (testing on one machine).')


def initialize_distributed(jax, config):
  """jax.distributed.initialize as the flags say, with the config's timeouts.

  Through vgg_jax.training.peers: a lost process then ends the others with one line and exit 75.
  Returns what peers.initialize returns, which must live as long as the run.
  """
  from vgg_jax.training import peers  # pylint: disable=g-import-not-at-top  (imports jax)
  if _CPU_COLLECTIVES.value:
    jax.config.update('jax_cpu_collectives_implementation', _CPU_COLLECTIVES.value)
  # JAX's heartbeat outlasts the peer watchdog, which then names the lost process.
  timeouts = dict(heartbeat_timeout_seconds=3 * config.peer_timeout_seconds,
                  shutdown_timeout_seconds=config.shutdown_timeout_seconds)
  workdir = _WORKDIR.value and os.path.abspath(_WORKDIR.value)
  if _DISTRIBUTED.value == 'auto':
    return peers.initialize(workdir, **timeouts)
  elif _DISTRIBUTED.value == 'explicit':
    missing = [name for name, flag in (('--coordinator_address', _COORDINATOR),
                                       ('--num_processes', _NUM_PROCESSES),
                                       ('--process_id', _PROCESS_ID)) if flag.value is None]
    if missing:
      raise app.UsageError(f'--distributed=explicit needs {", ".join(missing)}.')
    return peers.initialize(workdir, _COORDINATOR.value, _NUM_PROCESSES.value,
                            _PROCESS_ID.value, **timeouts)
  return None


def merge_config(defaults, stored: dict, overrides: dict):
  """defaults, updated with a run's stored config, then with explicit overrides.

  defaults: a ConfigDict (the --config file); stored: the run's config as saved in its
  checkpoints (JSON); overrides: {'eval.protocol': 'dense', ...}, applied last.
  """
  config = defaults.copy_and_resolve_references()
  config.unlock()

  def update(node, values):
    for key, value in values.items():
      if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
        update(node[key], value)
        continue
      if isinstance(node.get(key), tuple) and isinstance(value, list):
        value = tuple(value)
      with node.ignore_type():
        node[key] = value

  update(config, stored)
  with config.ignore_type():
    config.update_from_flattened_dict(overrides)
  return config


def run_config(stored: dict):
  """The config evaluate/predict use: a run's stored one under the explicit overrides."""
  overrides = config_flags.get_override_values(flags.FLAGS['config'])
  return merge_config(_CONFIG.value, stored, overrides)


def main(argv):
  if len(argv) > 1 and _MODE.value != 'predict':
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _MODE.value in ('predict', 'table'):  # Print the answer only, not the progress log.
    logging.set_verbosity(logging.WARNING)
  if host_memory.REUSE_HOST_MEMORY.value and host_memory.reuse_freed_memory():
    logging.info('Reusing freed host memory (--noreuse_host_memory turns this off).')
  # Imported only now: host memory must be set up before JAX and TensorFlow start threads.
  cli.import_tensorflow()  # First, without its start-up notices.
  import jax  # pylint: disable=g-import-not-at-top
  from vgg_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from vgg_jax.data import imagenet_classes  # pylint: disable=g-import-not-at-top
  from vgg_jax.evaluation import explain  # pylint: disable=g-import-not-at-top
  from vgg_jax.evaluation import protocols  # pylint: disable=g-import-not-at-top
  from vgg_jax.models import table2  # pylint: disable=g-import-not-at-top
  from vgg_jax import pretrained  # pylint: disable=g-import-not-at-top
  from vgg_jax.training import console  # pylint: disable=g-import-not-at-top
  from vgg_jax.training import train  # pylint: disable=g-import-not-at-top
  checkpointing.quiet_orbax_logs()
  if _MODE.value == 'table':
    table2.print_table2()
    return
  if not _WORKDIR.value:
    raise app.UsageError(f'--workdir is required for --mode={_MODE.value}.')
  # Kept referenced for the whole run: the C handler peers installed calls into it.
  abort_handler = initialize_distributed(jax, _CONFIG.value)  # pylint: disable=unused-variable
  if _MODE.value == 'evaluate':
    workdir = pretrained.resolve(_WORKDIR.value)
    config = run_config(checkpointing.load_meta(workdir)['config'])
    result = protocols.run(config.eval, [workdir, *config.eval.fusion_workdirs],
                          output_dir=workdir, data_config=config.data)
    print(protocols.format_table([result]))
    print(f"Wrote {result.get('path')}")
    for path in result.get('report', []):
      print(f'Wrote {path}')
    return
  if _MODE.value == 'predict':
    workdir = pretrained.resolve(_WORKDIR.value)
    config = run_config(checkpointing.load_meta(workdir)['config'])
    protocols.check_paths(argv[1:])
    setup = protocols.load_for_predict(config.eval, workdir, config.data)  # Read once.
    for path, top in protocols.predict(config.eval, workdir, argv[1:], setup=setup):
      print(path)
      for name, probability in top:  # ImageNet ids as 'golden retriever (n02099601)'.
        print(f'  {probability:7.2%}  {imagenet_classes.describe(name)}')
    if _EXPLAIN.value:
      explanation = explain.Explanation(_EXPLAIN.value, _EXPLAIN_LAYER.value,
                                        _SMOOTHGRAD.value, _SMOOTHGRAD_NOISE.value)
      for _, out, name, _ in protocols.explain_files(setup, argv[1:], explanation,
                                                     _EXPLAIN_DIR.value):
        print(f'Wrote {out} ({_EXPLAIN.value} of {imagenet_classes.describe(name)})')
    return
  start = time.monotonic()
  result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if result.get('preempted'):
    sys.exit(143)  # 128 + SIGTERM: not finished; rerun to resume.
  if jax.process_index() == 0:  # The numbers themselves are in DIR/metrics.jsonl.
    print(console.format_result(result, os.path.abspath(_WORKDIR.value),
                                time.monotonic() - start))


if __name__ == '__main__':
  cli.run(main)
