"""The ablation's --quick flow: three files, six configurations, finished runs skipped;
the same study through SLURM, one job per run, equal to it."""

import csv
import functools
import json
import os
import re
import subprocess
import sys
import time

import pytest

import data_helpers
import slurm_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = ('--preset=digits', '--quick', '--variants=A,A-LRN,E',
         '--noreuse_host_memory')  # Compile-bound: faster without it.
RUNS = ('A_seed0', 'A-LRN_seed0', 'E_warm_seed0', 'E_glorot_seed0')


def ablation_command(workdir, *extra):
  return [sys.executable, '-m', 'experiments.ablation', *STUDY, f'--workdir={workdir}', *extra]


def study_env():
  # One CPU device as a user has; LLVM's optimisation off: the quick flow is compile-bound.
  # The SLURM jobs inherit it from sbatch, and the tests' XLA compilation cache with it.
  return dict(os.environ, XLA_FLAGS=data_helpers.FAST_COMPILE_FLAGS)


def run_ablation(workdir, *extra):
  return subprocess.run(ablation_command(workdir, *extra), cwd=ROOT, env=study_env(),
                        capture_output=True, text=True, timeout=900)


def assert_png(path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    assert image.format == 'PNG' and image.size[0] > 400 and image.size[1] > 300


@pytest.mark.slow
def test_quick_ablation_writes_all_tables_and_plots_then_skips_and_equals_slurms(tmp_path):
  local = tmp_path / 'local'
  first = run_ablation(local)
  assert first.returncode == 0, first.stderr[-3000:]
  rows = list(csv.DictReader(open(local / 'ablation.csv')))
  # A and A-LRN once; the deeper nets warm-started from A and from Glorot.
  assert [(r['variant'], r['init']) for r in rows] == [
      ('A', ''), ('A-LRN', ''), ('E', 'warm'), ('E', 'glorot')]
  assert [int(r['weight_layers']) for r in rows] == [11, 11, 19, 19]
  assert all(0.0 <= float(r['single_top1']) <= 1.0 for r in rows)
  assert all(int(r['eval_images']) == 450 for r in rows)
  config = json.load(open(local / 'E_warm_seed0' / 'config.json'))
  assert config['init_from'] == str(local / 'A_seed0')
  assert json.load(open(local / 'E_glorot_seed0' / 'config.json'))['init_from'] == ''
  markdown = open(local / 'ablation.md').read()
  for title in ('Table 3 shape', 'Table 4 shape', 'Table 5 shape', 'Table 6 shape'):
    assert title in markdown
  assert 'warm start from A (Sec. 3.1), 4 steps' in markdown and 'Glorot' in markdown
  for variant in ('| A |', '| A-LRN |'):
    assert markdown.count(variant) == 2
  assert markdown.count('| E |') == 3  # Tables 3, 4 and 5.
  assert '| best two |' in markdown and '| all runs | 4 runs | dense |' in markdown
  assert '--preset=digits --quick --variants=A,A-LRN,E' in markdown
  for title in ('Table 5 shape', 'Table 6 shape'):  # --quick: a subset of the test split.
    assert 'the first 64 test images' in markdown.split(f'## {title}')[1].splitlines()[0]
  assert os.path.exists(local / 'E_warm_seed0' / 'eval_multicrop_32_36_noflip_first64.json')
  for name in ('ablation.png', 'ablation_curves.png'):
    assert_png(local / name)
  steps_before = sorted(os.listdir(local / 'E_warm_seed0' / 'checkpoints'))

  second = run_ablation(local)
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stderr.count('is finished: skipped') == 4
  assert 'Compiled the train step' not in second.stderr
  assert sorted(os.listdir(local / 'E_warm_seed0' / 'checkpoints')) == steps_before
  assert open(local / 'ablation.md').read().split('## Table 3')[1] == (
      markdown.split('## Table 3')[1])  # The cached evaluations give the same tables.

  # The same study through SLURM (skipped where none answers; .ci/run starts one).
  slurm_helpers.require_slurm()
  check_slurm_study(tmp_path / 'slurm', local)


def interrupt_mid_run(run_dir, job_id: str, command: list[str]):
  """Runs `command` (a requeue, or the time-limit signal) on a training job in its 4 steps.

  Sent 0.1 s after the log says the train step compiled: the loop, which saves on SIGTERM,
  starts a few ms after that line, and its 4 steps and the evaluation at step 2 take 0.6 s
  or more here (the signal arrives 0.1 s after the command; every run seen saved step 3).
  """
  log, deadline = run_dir / f'slurm-{job_id}.out', time.time() + 600
  while not (log.exists() and 'Compiled the train step' in log.read_text()):
    assert time.time() < deadline, f'job {job_id} did not start training in 10 minutes'
    time.sleep(0.05)
  time.sleep(0.1)
  subprocess.run(command, check=True, timeout=60)
  # SLURM holds a requeued job back for 2 minutes (its BeginTime): let it go in 3 s. Not
  # at once: slurmd refuses to start it again in the second its credential was revoked
  # ("Job credential revoked": the job fails; seen once in five).
  while slurm_helpers.job_state(job_id) != 'PENDING':
    assert time.time() < deadline, f'job {job_id} did not go back to the queue'
    time.sleep(0.1)
  subprocess.run(['scontrol', 'update', f'JobId={job_id}', 'StartTime=now+3'], check=True,
                 timeout=60)


def submit_requeue_and_wait(workdir):
  """Submits the study with --wait; requeues A's job mid-run and brings E_glorot's to its
  time limit: (exit code, output, job ids)."""
  submit = subprocess.Popen(ablation_command(workdir, '--launcher=slurm', '--wait'), cwd=ROOT,
                            env=study_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  ids, lines = {}, []
  try:
    for line in submit.stdout:
      lines.append(line)
      if match := re.match(r'(\S+): submitted job (\d+)', line):
        ids[match[1]] = match[2]
      if line.startswith('Follow it:'):
        break
    assert set(ids) == {*RUNS, 'report'}, ''.join(lines)
    a, glorot = ids['A_seed0'], ids['E_glorot_seed0']
    interrupt_mid_run(workdir / 'A_seed0', a, ['scontrol', 'requeue', a])
    # What --signal=B:USR1@SECONDS sends before the time limit, to the job script only.
    interrupt_mid_run(workdir / 'E_glorot_seed0', glorot,
                      ['scancel', '--batch', '--signal=USR1', glorot])
    rest = submit.communicate(timeout=900)[0]
  except BaseException:
    submit.kill()
    slurm_helpers.cancel(list(ids.values()))
    raise
  return submit.returncode, ''.join(lines) + rest, ids


def read_events(run_dir):
  return [json.loads(line) for line in open(run_dir / 'slurm_events.jsonl')]


def csv_rows(root):
  """ablation.csv's rows, each run's workdir by its name (the two studies' roots differ)."""
  return [{**row, 'workdir': os.path.basename(row['workdir'])}
          for row in csv.DictReader(open(root / 'ablation.csv'))]


def check_slurm_study(workdir, local):
  """The study as SLURM jobs, A's requeued mid-run: it ends equal to the local one."""
  code, output, ids = submit_requeue_and_wait(workdir)
  assert code == 0, output[-3000:]
  # A, A-LRN and the Glorot E at once; the warm-started E after A's job succeeded.
  assert f"E_warm_seed0: submitted job {ids['E_warm_seed0']} (--dependency=afterok:" \
         f"{ids['A_seed0']})." in output
  assert f"E_glorot_seed0: submitted job {ids['E_glorot_seed0']}." in output
  assert csv_rows(workdir) == csv_rows(local)  # Error for error.
  assert (open(workdir / 'ablation.md').read().split('## Table 3')[1] ==
          open(local / 'ablation.md').read().split('## Table 3')[1])
  # A's job saved a step and exited 143, was requeued, resumed from that step, finished;
  # E_glorot's did the same at its time limit, and requeued itself.
  for name, stop in (('A_seed0', 'end'), ('E_glorot_seed0', 'requeue')):
    events = [(e['event'], e['restart'], e.get('rc')) for e in read_events(workdir / name)]
    assert events == [('start', 0, None), (stop, 0, 143), ('start', 1, None), ('end', 1, 0)]
    log = (workdir / name / f'slurm-{ids[name]}.out').read_text()
    saved = re.search(r'Preempted: saved step (\d+)', log)
    assert saved and f'Resumed from step {saved[1]} ' in log, log[-3000:]
  a_end = read_events(workdir / 'A_seed0')[-1]['time']
  assert read_events(workdir / 'E_warm_seed0')[0]['time'] >= a_end
  # The jobs ran this checkout's code.
  assert f'cd {ROOT}\n' in (workdir / 'A_seed0' / 'slurm_job.sh').read_text()
  status = run_ablation(workdir, '--status')
  lines = status.stdout.splitlines()
  assert status.returncode == 0 and len(lines) == 6, status.stdout + status.stderr[-2000:]
  for name, line in zip([*RUNS, 'report'], lines):
    assert re.match(rf'{name} +done ', line), line
  again = run_ablation(workdir, '--launcher=slurm')  # The same command: nothing to submit.
  assert again.returncode == 0 and 'submitted job' not in again.stdout, again.stdout
  assert again.stdout.count('done, skipped.') == 5


def run_in_process(argv, monkeypatch):
  """ablation.main with these flags, in this process (so tfds.testing.mock_data applies).

  Checkpoints are saved synchronously here: while the mock's as_dataset runs, TFDS
  redirects every epath/gfile call of the process to a temporary mock file system, and
  an asynchronous Orbax save writing from its own thread at that moment would write
  there (seen in CI). Real TFDS does not do this.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import ablation  # pylint: disable=g-import-not-at-top
  from vgg_jax import checkpointing  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(checkpointing, 'create_manager', functools.partial(
      checkpointing.create_manager, async_save=False))
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['ablation', '--noreuse_host_memory'] + argv)
  try:
    ablation.main([])
  finally:
    flags.FLAGS.unparse_flags()


def quick_on_mock_data(tmp_path, monkeypatch, dataset: str, eval_split: str):
  """The --quick preset named like `dataset` on 40-example mock splits; its CSV rows."""
  data_dir = tmp_path / 'tfds'
  preset = 'imagenet' if dataset == 'imagenet2012' else dataset
  with data_helpers.mock_tfds(dataset, data_dir, {'train': 40, eval_split: 40}, 40):
    run_in_process([f'--preset={preset}', '--quick', f'--workdir={tmp_path / "out"}',
                    f'--data_dir={data_dir}', '--variants=A,D'], monkeypatch)
  return list(csv.DictReader(open(tmp_path / 'out' / 'ablation.csv')))


@pytest.mark.slow
def test_cifar10_quick_on_mock_data(tmp_path, monkeypatch):
  rows = quick_on_mock_data(tmp_path, monkeypatch, 'cifar10', 'test')
  assert [(r['variant'], r['init']) for r in rows] == [('A', ''), ('D', 'warm'),
                                                       ('D', 'glorot')]
  assert all(int(r['eval_images']) == 16 for r in rows)  # --quick: 16 test images.
  markdown = open(tmp_path / 'out' / 'ablation.md').read()
  assert 'Table 5 shape' in markdown and 'Table 6 shape' in markdown
  assert_png(tmp_path / 'out' / 'ablation_curves.png')


@pytest.mark.slow
def test_imagenet_quick_on_mock_data_runs_every_column(tmp_path, monkeypatch):
  rows = quick_on_mock_data(tmp_path, monkeypatch, 'imagenet2012', 'validation')
  assert [(r['variant'], r['train_scale']) for r in rows] == [
      ('A', '256'), ('D', '256'), ('D', '384'), ('D', '256-512')]
  assert all(int(r['eval_images']) == 4 for r in rows)  # --quick: 4 test images.
  config = json.load(open(tmp_path / 'out' / 'D_S256-512_warm_seed0' / 'config.json'))
  assert config['init_from'] == str(tmp_path / 'out' / 'D_S384_warm_seed0')
  assert (config['data']['scale_min'], config['data']['scale_max']) == (32, 64)
  markdown = open(tmp_path / 'out' / 'ablation.md').read()
  # The paper's figures beside ours in every table.
  for figure in ('29.6 / 10.4', '26.6 / 8.6', '25.6 / 8.1', '24.4 / 7.2', '23.7 / 6.8'):
    assert figure in markdown
  assert_png(tmp_path / 'out' / 'ablation.png')


def test_imagenet_preset_plans_the_papers_training_scales(tmp_path):
  from absl import flags  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from experiments import ablation  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['ablation_test', f'--workdir={tmp_path}'])
  preset = ablation.get_preset('imagenet', quick=False)
  runs = ablation.plan_runs(preset, str(tmp_path), seed=0)
  by_name = {os.path.basename(run.workdir): (run.variant, run.scale, run.config,
                                                 run.single_q, run.multi_q) for run in runs}
  assert len(runs) == 6 + 3 + 3
  # S=256: A from N(0, 0.01^2); the deeper nets warm-start from A (Sec. 3.1).
  assert by_name['A_seed0'][2].model.kernel_init == 'paper'
  assert by_name['D_warm_seed0'][2].init_from == str(tmp_path / 'A_seed0')
  assert by_name['D_warm_seed0'][3:] == ((256,), (224, 256, 288))
  # S=384 from the S=256 net at lr 1e-3; S in [256, 512] from the S=384 net (Tables 3, 4).
  s384 = by_name['E_S384_warm_seed0'][2]
  assert s384.init_from == str(tmp_path / 'E_warm_seed0') and s384.optimizer.learning_rate == 1e-3
  assert (s384.data.scale_min, s384.data.scale_max, s384.data.eval_scale) == (384, 384, 384)
  jitter = by_name['C_S256-512_warm_seed0']
  assert jitter[2].init_from == str(tmp_path / 'C_S384_warm_seed0')
  assert (jitter[2].data.scale_min, jitter[2].data.scale_max) == (256, 512)
  assert jitter[3:] == ((384,), (256, 384, 512))
  assert set(jitter[2].init_layers) == set(ablation.models.layer_names('C'))
  # Runs come in training order: every init_from is planned before its user.
  order = [run.workdir for run in runs]
  for run in runs:
    if run.config.init_from:
      assert order.index(run.config.init_from) < order.index(run.workdir)


def test_digits_preset_plans_both_initialisations_and_budgets(tmp_path):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import ablation  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['ablation_test', f'--workdir={tmp_path}'])
  preset = ablation.get_preset('digits', quick=False)
  preset.budgets = (1.0, 2.0)  # What --budgets=1,2 sets.
  runs = ablation.plan_runs(preset, str(tmp_path), seed=1)
  names = [os.path.basename(run.workdir) for run in runs]
  assert names[:2] == ['A_seed1', 'A-LRN_seed1'] and len(runs) == 2 + 4 * 2 * 2
  assert {run.init for run in runs[2:]} == {'warm', 'glorot'}
  by_name = {os.path.basename(run.workdir): run for run in runs}
  warm, glorot = by_name['E_warm_seed1'].config, by_name['E_glorot_x2_seed1'].config
  assert warm.init_from == str(tmp_path / 'A_seed1') and glorot.init_from == ''
  # Sec. 3.1's seven layers: A's first four convs and its three FC layers.
  assert tuple(warm.init_layers) == ('conv1_1', 'conv2_1', 'conv3_1', 'conv3_2', 'fc6', 'fc7',
                                     'fc8')
  assert (warm.num_epochs, glorot.num_epochs) == (15.0, 30.0)  # A's budget, and 2x.
  assert by_name['A_seed1'].config.num_epochs == 15.0 and warm.seed == 1
