"""The A -> E depth ablation as the paper ran it (Tables 3-6) as one command.

  python -m experiments.ablation --preset=digits --workdir=workdirs/ablation [--quick]

Trains A and A-LRN, then B, C, D, E both warm-started from the same seed's finished A
(its seven layers, Sec. 3.1) and Glorot-initialised (the preset says which initialisations
and step budgets), skips runs already finished and resumes interrupted ones, evaluates
each with the single-scale and the multi-scale protocols, then, from the same runs with no
extra training, Table 5 (dense vs multi-crop vs both) and Table 6 (fusion). Writes
DIR/ablation.md, ablation.csv, ablation.png and ablation_curves.png
(experiments/ablation_report.py).

  python -m experiments.ablation ... --launcher=slurm [--slurm_partition=gpu ...] [--wait]
  python -m experiments.ablation --workdir=DIR --status

--launcher=slurm submits each run as its own SLURM job and the tables as one last job
(experiments/ablation_slurm.py, docs/multihost.md); --status prints where each run stands.
"""

import csv
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import ml_collections

from experiments import ablation_report
from experiments import ablation_slurm
from experiments.configs import base
from experiments.configs import cifar10
from experiments.configs import digits
from experiments.configs import imagenet
from vgg_jax import checkpointing
from vgg_jax import cli
from vgg_jax import errors
from vgg_jax import files
from vgg_jax import models
from vgg_jax.training import host_memory

_PRESET = flags.DEFINE_enum('preset', 'digits', ['digits', 'cifar10', 'imagenet'],
                            'Which study to run.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where runs and results go.', required=True)
_QUICK = flags.DEFINE_bool('quick', False, 'Tiny settings: the whole flow in minutes.')
_SEEDS = flags.DEFINE_integer('seeds', None, 'Seeds per configuration (preset default).')
_VARIANTS = flags.DEFINE_list('variants', None, 'Configurations to train (default: all six; '
                              'A is always trained when a warm start needs it).')
_INITS = flags.DEFINE_list('inits', None, "The deeper nets' initialisations, 'warm' and/or "
                           "'glorot' (preset default).")
_BUDGETS = flags.DEFINE_list('budgets', None, "The deeper nets' step budgets in multiples of "
                             "A's, e.g. '1,2' (preset default: 1).")
flags.adopt_module_key_flags(host_memory)  # Its --reuse_host_memory, in --help.
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir (cifar10, imagenet).')
_LAUNCHER = flags.DEFINE_enum(
    'launcher', 'local', ['local', 'slurm'], "'local': every run in this process, one after "
    "another; 'slurm': each run its own SLURM job, then one job for the tables (the "
    '--slurm_* flags; docs/multihost.md).')
_STATUS = flags.DEFINE_bool('status', False, "Print where each job of DIR's study stands and "
                            'exit (non-zero when one failed).')
_WAIT = flags.DEFINE_bool('wait', False, 'With --launcher=slurm or --status: follow the study '
                          'to its end with a progress line.')
_RUN = flags.DEFINE_string('run', None, "Train this one run (its folder's name, e.g. "
                           "'E_warm_seed0') and nothing else: what each SLURM job runs.")
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Evaluate the finished runs and write '
                                 'the tables; train nothing (the last SLURM job).')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'none', ['none', 'auto'], "'auto': one process per host, as launch.py's "
    '(every worker of a TPU pod slice runs the same command; multi-node SLURM jobs).')
flags.adopt_module_key_flags(ablation_slurm)  # Its --slurm_* flags, in --help.

VARIANTS = tuple(models.CONFIGS)
SHALLOW = ('A', 'A-LRN')  # Trained once; the deeper nets start from A or from Glorot.
INITS = ('warm', 'glorot')
SCALE_VARIANTS = ('C', 'D', 'E')  # Trained at the further scales of Tables 3 and 4.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # The SLURM jobs' cwd.


@dataclasses.dataclass
class TrainingScale:
  """A further training-scale column of Tables 3 and 4, for C, D and E (Sec. 3.1)."""
  name: str  # '384' or '256-512'.
  scale_min: int  # S, pixels.
  scale_max: int
  single_scales: tuple[int, ...]  # Q of the single-scale test.
  multi_scales: tuple[int, ...]  # Q of the multi-scale test.
  start_from: str  # Column whose finished run of the same variant initialises this one.
  learning_rate: float


@dataclasses.dataclass
class Preset:
  """What one study trains and how it tests (Sec. 3.1, 3.2)."""
  make_config: Any  # variant -> ConfigDict.
  seeds: int
  single_scales: tuple[int, ...]  # Q for Table 3's single-scale test.
  multi_scales: tuple[int, ...]  # Q for Table 4's multi-scale test.
  multi_protocol: str  # The protocol of the multi-scale column.
  flip: bool  # Average with horizontal flips at test time (not for digits).
  inits: tuple[str, ...]  # The deeper nets' initialisations: 'warm' (from A), 'glorot'.
  budgets: tuple[float, ...]  # The deeper nets' training lengths, in multiples of A's.
  budget_rule: str  # How the budgets were chosen, for ablation.md.
  paper: bool  # Print the paper's ImageNet numbers beside ours.
  fusion_scales: tuple[int, ...]  # Q of Tables 5 and 6.
  table5_note: str  # Which runs Table 5 tests.
  variants: tuple[str, ...] = VARIANTS
  eval_max_examples: int = 0  # Test images per evaluation (0: the whole split).
  fusion_max_examples: int | None = None  # Tables 5 and 6's (None: eval_max_examples).
  table5_variants: tuple[str, ...] = ('D', 'E')
  scale_name: str = ''  # The main column's training scale, for the tables.
  extra_scales: tuple[TrainingScale, ...] = ()  # Further columns for C, D, E.

  @property
  def fusion_examples(self) -> int:
    """Test images of each Table 5 / Table 6 evaluation (0: the whole split)."""
    if self.fusion_max_examples is None:
      return self.eval_max_examples
    return self.fusion_max_examples

  @property
  def table5_column(self) -> str:
    """Table 5 tests the last training-scale column (the paper's: S jittered)."""
    return self.extra_scales[-1].name if self.extra_scales else self.scale_name


@dataclasses.dataclass
class Run:
  """One training run of the study and how it is tested."""
  variant: str
  init: str  # '' for A / A-LRN; 'warm' or 'glorot' for the deeper nets.
  budget: float
  scale: str  # Training-scale column.
  seed: int
  workdir: str
  config: ml_collections.ConfigDict
  single_q: tuple[int, ...]
  multi_q: tuple[int, ...]


def shrink(config, quick: bool):
  """--quick: tiny widths and a few steps, evaluated at every step count's end."""
  if quick:
    config.model.width = 0.0625
    config.model.fc_width = 32
    config.num_train_steps = 4
    config.global_batch_size = min(config.global_batch_size, 16)
    config.eval_batch_size = min(config.eval_batch_size, 64)
    config.eval_every_steps = config.checkpoint_every_steps = config.log_every_steps = 2
  return config


def digits_config(variant: str, quick: bool) -> ml_collections.ConfigDict:
  config = digits.get_config()
  config.model.variant = variant
  config.model.width = 0.125  # 8..64 channels, so the runs fit a CPU budget.
  config.model.fc_width = 128
  config.num_epochs = 15.0  # 315 steps: A's budget.
  config.eval_every_steps = 35  # Nine points of each curve at A's budget.
  config.checkpoint_every_steps = 105
  config.log_every_steps = 105
  return shrink(config, quick)


def tfds_config(make, variant: str, quick: bool, image_size: int | None = None):
  config = make(variant)
  config.data.data_dir = _DATA_DIR.value
  if quick:  # Small crops of the mock's images, and the paper's scales shrunk to match.
    config.model.image_size = image_size or config.model.image_size
    config.data.scale_min, config.data.scale_max = 32, 40
    config.data.eval_scale = 32
    config.data.stats_max_examples = 16
    config.data.download = False  # Tests run on tfds.testing.mock_data; nothing to fetch.
  return shrink(config, quick)


def get_preset(name: str, quick: bool) -> Preset:
  if name == 'digits':
    return Preset(
        lambda v: digits_config(v, quick), 1 if quick else 2, (32,),
        (32, 36) if quick else (32, 36, 40), 'dense', flip=False, inits=INITS,
        budgets=(1.0,), paper=False,
        fusion_scales=(32, 36) if quick else (32, 36, 40),
        # --quick: Tables 5 and 6 on 64 test images; multi-crop of all 450 would dominate
        # the flow's time (docs/performance.md).
        fusion_max_examples=64 if quick else 0,
        table5_note='the warm-started D and E at A\'s budget',
        budget_rule=('every net gets A\'s 315 steps (15 epochs), both '
                     'initialisations, 2 seeds. Measured on 2 CPU cores: 70-105 s per run '
                     'with its two tests, 37 min for the 20 runs, 12 min more for Tables 5 '
                     'and 6; a 2x budget for the deeper nets (--budgets=1,2: 16 more runs) '
                     'would add about 40 min, past this preset\'s 30-minute goal.'))
  if name == 'cifar10':
    return Preset(lambda v: tfds_config(cifar10.get_config, v, quick), 1 if quick else 2,
                  (32,), (32, 36, 40), 'dense', flip=True, inits=INITS, budgets=(1.0,),
                  paper=False, fusion_scales=(32, 36, 40), eval_max_examples=16 if quick else 0,
                  table5_note='the warm-started D and E',
                  budget_rule='every net trains the same 60 epochs.')

  def make_imagenet(variant):  # Sec. 3.1: A from N(0, 0.01^2); the rest warm-started.
    config = tfds_config(imagenet.get_config, variant, quick, image_size=32)
    config.model.kernel_init = 'paper' if variant in SHALLOW else 'glorot'
    return config
  if quick:  # The paper's S and Q divided by 8, kept at least the 32-pixel crop.
    q, extra = (32,), (TrainingScale('384', 48, 48, (48,), (40, 48, 56), '256', 1e-3),
                       TrainingScale('256-512', 32, 64, (48,), (32, 48, 64), '384', 1e-3))
    single, multi, fusion = q, (32, 36, 40), (32, 48, 64)
  else:
    extra = (  # S=384 from the S=256 net at lr 1e-3; jittered S from the S=384 net.
        TrainingScale('384', 384, 384, (384,), (352, 384, 416), '256', 1e-3),
        TrainingScale('256-512', 256, 512, (384,), (256, 384, 512), '384', 1e-3))
    single, multi, fusion = (256,), (224, 256, 288), (256, 384, 512)
  return Preset(make_imagenet, 1, single, multi, 'dense', flip=True, inits=('warm',),
                budgets=(1.0,), paper=True, fusion_scales=fusion, scale_name='256',
                extra_scales=extra, table5_note='D and E trained with S jittered',
                eval_max_examples=4 if quick else 0,  # Dense: a compilation per image shape.
                budget_rule='the paper\'s, 74 epochs with the plateau rule.')


def run_name(variant: str, seed: int, scale: str = '', init: str = '',
             budget: float = 1.0) -> str:
  parts = [variant] + ([f'S{scale}'] if scale else []) + ([init] if init else [])
  return '_'.join(parts + ([f'x{budget:g}'] if budget != 1 else []) + [f'seed{seed}'])


def plan_runs(preset: Preset, root: str, seed: int) -> list[Run]:
  """The study's runs for one seed, in training order (every init_from before its user)."""
  runs = []

  def add(variant, init, budget, scale, config, single_q, multi_q):
    config.seed = seed
    workdir = os.path.join(root, run_name(variant, seed, scale if scale != preset.scale_name
                                          else '', init, budget))
    runs.append(Run(variant, init, budget, scale, seed, workdir, config, single_q, multi_q))

  deep = [v for v in preset.variants if v not in SHALLOW]
  shallow = [v for v in SHALLOW if v in preset.variants or (v == 'A' and deep and
                                                            'warm' in preset.inits)]
  for variant in shallow:
    add(variant, '', 1.0, preset.scale_name, preset.make_config(variant),
        preset.single_scales, preset.multi_scales)
  for budget in preset.budgets:
    for init in preset.inits:
      for variant in deep:
        config = preset.make_config(variant)
        config.num_epochs *= budget
        if config.num_train_steps > 0:
          config.num_train_steps = int(config.num_train_steps * budget)
        if init == 'warm':
          config.init_from = os.path.join(root, run_name('A', seed))
        add(variant, init, budget, preset.scale_name, config, preset.single_scales,
            preset.multi_scales)
  for extra in preset.extra_scales:
    for variant in (v for v in SCALE_VARIANTS if v in deep):
      config = preset.make_config(variant)
      source = '' if extra.start_from == preset.scale_name else extra.start_from
      config.init_from = os.path.join(root, run_name(variant, seed, source, preset.inits[0]))
      config.init_layers = models.layer_names(variant)  # The whole net.
      config.optimizer.learning_rate = extra.learning_rate
      config.data.scale_min, config.data.scale_max = extra.scale_min, extra.scale_max
      config.data.eval_scale = extra.single_scales[0]
      add(variant, preset.inits[0], 1.0, extra.name, config, extra.single_scales,
          extra.multi_scales)
  return runs


def train_run(config, workdir: str) -> None:
  """Trains (or resumes, or skips when finished) one configuration."""
  # Imported here, after main() set up host memory: TensorFlow starts threads on import.
  import jax  # pylint: disable=g-import-not-at-top
  from vgg_jax.training import train  # pylint: disable=g-import-not-at-top
  done = os.path.join(workdir, 'done.json')
  if os.path.exists(done):
    logging.info('%s is finished: skipped.', workdir)
    return
  result = train.train_and_evaluate(config, workdir)
  if result.get('preempted'):
    raise SystemExit(143)
  if jax.process_index() == 0:  # A multi-node run's processes share the workdir.
    files.write_file_atomically(done, json.dumps(
        {k: v for k, v in result.items() if isinstance(v, (int, float, bool))}))


def evaluate_runs(workdirs, protocol: str, scales, flip: bool, cache_dir: str,
                  max_examples: int = 0) -> dict:
  """Cached evaluation (fusion if several) of the runs' best checkpoints."""
  # Imported here, after main() set up host memory: TensorFlow starts threads on import.
  from vgg_jax.evaluation import protocols  # pylint: disable=g-import-not-at-top
  key = (f"eval_{protocol.replace('+', '_')}_{'_'.join(map(str, scales))}"
         f"{'' if flip else '_noflip'}{f'_first{max_examples}' if max_examples else ''}")
  if len(workdirs) > 1 or cache_dir != workdirs[0]:  # A fusion: named by its members.
    members = hashlib.sha1('\n'.join(sorted(workdirs)).encode()).hexdigest()[:10]
    key = f'fusion_{len(workdirs)}_{members}_{key}'
  path = os.path.join(cache_dir, key + '.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  config = base.eval_config()
  config.protocol, config.scales, config.flip, config.batch_size = (protocol, tuple(scales),
                                                                    flip, 256)
  config.max_examples = max_examples
  result = protocols.run(config, list(workdirs))
  files.write_file_atomically(path, json.dumps(result))
  return result


def plan_study(preset: Preset, root: str, seeds: int) -> list[Run]:
  """Every seed's runs, in training order."""
  return [run for seed in range(seeds) for run in plan_runs(preset, root, seed)]


def train_and_test(preset: Preset, runs: list[Run]) -> list[dict[str, Any]]:
  """Every run trained (or skipped) and tested single- and multi-scale: one row each."""
  rows = []
  for run in runs:
    logging.info('=== %s %s S=%s seed %d (%s) ===', run.variant, run.init or '-',
                 run.scale or '-', run.seed, run.workdir)
    train_run(run.config, run.workdir)
    single = evaluate_runs([run.workdir], 'single', run.single_q, preset.flip, run.workdir,
                           preset.eval_max_examples)
    multi = evaluate_runs([run.workdir], preset.multi_protocol, run.multi_q, preset.flip,
                          run.workdir, preset.eval_max_examples)
    with open(os.path.join(run.workdir, 'done.json')) as f:
      steps = json.load(f)['step']
    rows.append({'variant': run.variant, 'init': run.init, 'budget': run.budget,
                 'train_scale': run.scale, 'seed': run.seed, 'steps': steps,
                 'weight_layers': len(models.layer_names(run.variant)),
                 'single_top1': single['top1_error'], 'single_top5': single['top5_error'],
                 'multi_top1': multi['top1_error'], 'multi_top5': multi['top5_error'],
                 'eval_images': single['num_images'], 'workdir': run.workdir})
  return rows


def tables_5_and_6(preset: Preset, rows, root: str):
  """Table 5 (protocols) and Table 6 (fusion) from the finished runs, no training."""
  main_init = preset.inits[0]
  table5 = {}
  for variant in preset.table5_variants:
    chosen = [r for r in rows if r['variant'] == variant and r['init'] == main_init and
              r['budget'] == 1 and r['train_scale'] == preset.table5_column]
    if chosen:
      table5[variant] = {p: [evaluate_runs([r['workdir']], p, preset.fusion_scales,
                                           preset.flip, r['workdir'],
                                           preset.fusion_examples) for r in chosen]
                         for p in ablation_report.PROTOCOLS_TABLE5}
  ranked = sorted(rows, key=lambda r: (r['multi_top1'], r['multi_top5']))
  # All runs with the cheaper dense protocol: 50 crops per scale of every run would take
  # longer than the study (docs/performance.md).
  groups = [('best single', ranked[:1], 'dense+multicrop'),
            ('best two', ranked[:2], 'dense+multicrop'),
            ('all runs', ranked, preset.multi_protocol)]
  fusions = []
  for name, members, protocol in groups:
    if name != 'best single' and len(members) < 2:
      continue
    result = evaluate_runs([r['workdir'] for r in members], protocol, preset.fusion_scales,
                           preset.flip, root, preset.fusion_examples)
    fusions.append((name, [os.path.basename(r['workdir']) for r in members], result))
  return table5, fusions


def write_csv(path: str, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def preset_from_flags() -> Preset:
  preset = get_preset(_PRESET.value, _QUICK.value)
  if _VARIANTS.value:
    unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
    if unknown:
      raise app.UsageError(f'--variants: {unknown} are not among {list(VARIANTS)}.')
    preset.variants = tuple(v for v in VARIANTS if v in _VARIANTS.value)
  if _INITS.value:
    unknown = [i for i in _INITS.value if i not in INITS]
    if unknown:
      raise app.UsageError(f'--inits: {unknown} are not among {list(INITS)}.')
    preset.inits = tuple(_INITS.value)
  if _BUDGETS.value:
    try:
      preset.budgets = tuple(float(b) for b in _BUDGETS.value)
    except ValueError as error:
      raise app.UsageError(f'--budgets: {_BUDGETS.value} are not numbers.') from error
    if not all(b > 0 for b in preset.budgets):
      raise app.UsageError(f'--budgets must be positive, got {_BUDGETS.value}.')
  return preset


def command_line() -> str:
  """The command that reproduces this study (its workdir left as DIR)."""
  parts = ['python -m experiments.ablation', f'--preset={_PRESET.value}']
  parts += ['--quick'] if _QUICK.value else []
  parts += [f'--seeds={_SEEDS.value}'] if _SEEDS.value else []
  parts += [f'--variants={",".join(_VARIANTS.value)}'] if _VARIANTS.value else []
  parts += [f'--inits={",".join(_INITS.value)}'] if _INITS.value else []
  parts += [f'--budgets={",".join(_BUDGETS.value)}'] if _BUDGETS.value else []
  parts += ['--data_dir=...'] if _DATA_DIR.value else []
  return ' '.join(parts + ['--workdir=DIR'])


def study_flags(seeds: int) -> list[str]:
  """The flags that define this study, spelled out: what each of its SLURM jobs is given."""
  parts = [f'--preset={_PRESET.value}', '--quick' if _QUICK.value else '--noquick',
           f'--seeds={seeds}']
  parts += [f'--variants={",".join(_VARIANTS.value)}'] if _VARIANTS.value else []
  parts += [f'--inits={",".join(_INITS.value)}'] if _INITS.value else []
  parts += [f'--budgets={",".join(_BUDGETS.value)}'] if _BUDGETS.value else []
  parts += [f'--data_dir={_DATA_DIR.value}'] if _DATA_DIR.value else []
  reuse = host_memory.REUSE_HOST_MEMORY.value
  return parts + ['--reuse_host_memory' if reuse else '--noreuse_host_memory']


def study_jobs(runs: list[Run], root: str, seeds: int,
               nodes: int) -> list[ablation_slurm.Job]:
  """One job per run (after its warm-start source's), then the evaluations and tables."""
  command = (sys.executable, '-m', 'experiments.ablation', *study_flags(seeds),
             f'--workdir={root}')
  names = {run.workdir: os.path.basename(run.workdir) for run in runs}
  spread = ('--distributed=auto',) if nodes > 1 else ()
  jobs = [ablation_slurm.Job(names[run.workdir], run.workdir,
                             command + (f'--run={names[run.workdir]}',) + spread,
                             after=tuple(names[source] for source in [run.config.init_from]
                                         if source in names), nodes=nodes)
          for run in runs]
  return jobs + [ablation_slurm.Job('report', os.path.join(root, 'report'),
                                    command + ('--report_only',), after_all=True)]


def train_one(runs: list[Run], name: str):
  """--run: one run of the study trained, once its warm-start source has finished."""
  by_name = {os.path.basename(run.workdir): run for run in runs}
  if name not in by_name:
    raise app.UsageError(f'--run={name} is not a run of this study: {sorted(by_name)}.')
  run = by_name[name]
  source = run.config.init_from
  if source and not os.path.exists(os.path.join(source, 'done.json')):
    raise errors.UserError(f'{name} warm-starts from {source}, which has not finished.')
  train_run(run.config, run.workdir)


def initialize_distributed(root: str, config):
  """--distributed=auto: jax.distributed.initialize as launch.py's (SLURM, TPU pod slices).

  Returns the lost-peer handler, which must stay referenced for as long as the study runs.
  """
  # Imported here, after main() set up host memory: it imports jax.
  from vgg_jax.training import peers  # pylint: disable=g-import-not-at-top
  return peers.initialize(root, heartbeat_timeout_seconds=3 * config.peer_timeout_seconds,
                          shutdown_timeout_seconds=config.shutdown_timeout_seconds)


def check_finished(runs: list[Run], root: str):
  """--report_only: stops with the names of the runs that did not finish, if any."""
  missing = [os.path.basename(run.workdir) for run in runs
             if not os.path.exists(os.path.join(run.workdir, 'done.json'))]
  if missing:
    raise errors.UserError(f'{len(missing)} run(s) did not finish, so no tables: '
                           f'{", ".join(missing)} (python -m experiments.ablation '
                           f'--workdir={root} --status gives their errors).')


def launch_on_slurm(root: str, jobs: list[ablation_slurm.Job]) -> int:
  """Submits the study's jobs, prints their ids; with --wait, follows them to the end."""
  try:
    lines = ablation_slurm.submit(root, jobs, ablation_slurm.resources_from_flags(), REPO)
  except ablation_slurm.SlurmError as error:
    raise errors.UserError(str(error)) from error
  print('\n'.join(lines))
  print(f'Follow it: python -m experiments.ablation --workdir={root} --status [--wait]',
        flush=True)
  return ablation_slurm.follow(root) if _WAIT.value else 0


def show_status(root: str) -> int:
  try:
    return ablation_slurm.follow(root) if _WAIT.value else ablation_slurm.print_status(root)
  except ablation_slurm.SlurmError as error:
    raise errors.UserError(str(error)) from error


def write_report(preset: Preset, rows, root: str, seeds: int, start: float):
  """Tables 5 and 6 from the runs, then ablation.md, .csv, .png and _curves.png."""
  import jax  # pylint: disable=g-import-not-at-top  (after main() set up host memory)
  table5, fusions = tables_5_and_6(preset, rows, root)
  if jax.process_index() != 0:  # Every process evaluates; the first one writes.
    return
  write_csv(os.path.join(root, 'ablation.csv'), rows)
  name = _PRESET.value
  header = {'preset': name, 'seconds': time.time() - start,
            'budget_rule': preset.budget_rule, 'quick': _QUICK.value,
            'command': command_line()}
  ablation_report.write_markdown(os.path.join(root, 'ablation.md'), rows, preset, header,
                                 table5, fusions)
  main_rows = [r for r in rows if r['train_scale'] == preset.scale_name]
  title = (f'VGG depth ablation, preset {name}{" --quick" if _QUICK.value else ""}: '
           f'{ablation_report.plural(seeds, "seed")} per configuration')
  ablation_report.write_plot(os.path.join(root, 'ablation.png'), main_rows, preset.variants,
                             title)
  ablation_report.write_curves(os.path.join(root, 'ablation_curves.png'), main_rows,
                               preset.variants, title)
  print(open(os.path.join(root, 'ablation.md')).read())
  print(f'Wrote {root}/ablation.md, ablation.csv, ablation.png, ablation_curves.png in '
        f'{(time.time() - start) / 60:.1f} min.')


def main(argv):
  del argv
  root = os.path.abspath(_WORKDIR.value)
  if _STATUS.value:
    sys.exit(show_status(root))
  if host_memory.REUSE_HOST_MEMORY.value:
    host_memory.reuse_freed_memory()  # Faster CPU steps, before JAX starts its threads.
  cli.import_tensorflow()  # Once, without its start-up notices.
  checkpointing.quiet_orbax_logs()
  start = time.time()
  preset = preset_from_flags()
  seeds = _SEEDS.value or preset.seeds
  os.makedirs(root, exist_ok=True)
  runs = plan_study(preset, root, seeds)
  if _LAUNCHER.value == 'slurm' and not (_RUN.value or _REPORT_ONLY.value):
    jobs = study_jobs(runs, root, seeds, ablation_slurm.resources_from_flags().nodes)
    ablation_slurm.write_study(root, jobs)
    sys.exit(launch_on_slurm(root, jobs))
  # Kept referenced for the whole study: the C handler peers installed calls into it.
  handler = (initialize_distributed(root, runs[0].config)  # pylint: disable=unused-variable
             if _DISTRIBUTED.value == 'auto' else None)
  if _RUN.value:
    train_one(runs, _RUN.value)
    return
  if _REPORT_ONLY.value:
    check_finished(runs, root)
  else:  # For --status.
    ablation_slurm.write_study(root, study_jobs(runs, root, seeds, 1))
  write_report(preset, train_and_test(preset, runs), root, seeds, start)
  if _REPORT_ONLY.value:  # The report job's mark: done, with these flags.
    os.makedirs(os.path.join(root, 'report'), exist_ok=True)
    files.write_file_atomically(os.path.join(root, 'report', 'done.json'),
                                json.dumps({'flags': sys.argv[1:]}))


if __name__ == '__main__':
  cli.run(main)
