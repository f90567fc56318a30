"""vgg_jax entry point: absl flags -> config -> the chosen mode.

  python launch.py --workdir=DIR [--config=experiments/configs/NAME.py[:ARG]] \\
      [--config.FIELD=VALUE ...] [--mode=train|table]

Without --config it trains a narrow VGG-D on the embedded digits set. Running the same
command on the same DIR resumes.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # Before TensorFlow is imported.

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(_HERE, 'experiments', 'configs', 'digits.py'),
    'Experiment config file (a get_config() returning a ConfigDict).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'evaluate', 'predict', 'table'],
    "'train' (or resume); 'evaluate' runs config.eval's protocol on DIR's checkpoint "
    "(model and data from the checkpoint's config); 'predict' prints the top-5 classes of "
    "the image files given as arguments; 'table' prints Table 2 reproduced.")
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'none', ['none', 'auto', 'explicit'],
    "Multi-process JAX: 'auto' lets jax.distributed.initialize detect TPU/SLURM/etc.; "
    "'explicit' uses --coordinator_address, --num_processes and --process_id.")
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process: 0..num_processes-1.')
_REUSE_HOST_MEMORY = flags.DEFINE_bool(
    'reuse_host_memory', True,
    'Where JAX computes on the CPU, keep freed host memory for reuse (glibc): no page '
    'faults on XLA\'s per-step buffers, 8-15% faster CPU steps, ~40% slower compiles; '
    'see vgg_jax/host_memory.py.')
_CPU_COLLECTIVES = flags.DEFINE_enum(
    'cpu_collectives', None, ['gloo', 'mpi'],
    'Collectives for multi-process runs on CPU devices (testing on one machine).')


def initialize_distributed():
  import jax  # pylint: disable=g-import-not-at-top
  if _CPU_COLLECTIVES.value:
    jax.config.update('jax_cpu_collectives_implementation', _CPU_COLLECTIVES.value)
  if _DISTRIBUTED.value == 'auto':
    jax.distributed.initialize()
  elif _DISTRIBUTED.value == 'explicit':
    missing = [name for name, flag in (('--coordinator_address', _COORDINATOR),
                                       ('--num_processes', _NUM_PROCESSES),
                                       ('--process_id', _PROCESS_ID)) if flag.value is None]
    if missing:
      raise app.UsageError(f'--distributed=explicit needs {", ".join(missing)}.')
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def main(argv):
  if len(argv) > 1 and _MODE.value != 'predict':
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _REUSE_HOST_MEMORY.value:
    from vgg_jax import host_memory  # pylint: disable=g-import-not-at-top
    if host_memory.reuse_freed_memory():  # Before JAX and TensorFlow start threads.
      logging.info('Reusing freed host memory (--noreuse_host_memory turns this off).')
  from vgg_jax import checkpointing  # pylint: disable=g-import-not-at-top
  checkpointing.quiet_orbax_logs()
  if _MODE.value == 'table':
    from vgg_jax import models  # pylint: disable=g-import-not-at-top
    models.print_table2()
    return
  if not _WORKDIR.value:
    raise app.UsageError(f'--workdir is required for --mode={_MODE.value}.')
  initialize_distributed()
  if _MODE.value == 'evaluate':
    from vgg_jax import evaluate  # pylint: disable=g-import-not-at-top
    eval_config = _CONFIG.value.eval
    result = evaluate.run(eval_config, [_WORKDIR.value, *eval_config.fusion_workdirs],
                          output_dir=_WORKDIR.value)
    print(evaluate.format_table([result]))
    print(f"Wrote {result.get('path')}")
    return
  if _MODE.value == 'predict':
    from vgg_jax import evaluate  # pylint: disable=g-import-not-at-top
    for path, top in evaluate.predict(_CONFIG.value.eval, _WORKDIR.value, argv[1:]):
      print(path)
      for name, probability in top:
        print(f'  {probability:7.2%}  {name}')
    return
  from vgg_jax import train  # pylint: disable=g-import-not-at-top
  result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if result.get('preempted'):
    sys.exit(143)  # 128 + SIGTERM: not finished; rerun to resume.
  logging.info('Finished at step %d: %s', result['step'],
               {k: v for k, v in result.items() if k.startswith('eval/')})


if __name__ == '__main__':
  app.run(main)
