"""Fault injection: kills at random points, lost processes, a full disk. pytest -m slow -k fault.

The lost-process matrix injects its faults through tests/fault_launch.py.
"""

import itertools
import os
import signal
import subprocess
import threading
import time

import jax
import numpy as np
import pytest

import run_helpers  # tests/ is on sys.path
from vgg_jax.training import train

OVERRIDES = dict(num_train_steps=60, checkpoint_every_steps=3, eval_every_steps=1000,
                 log_every_steps=3)


@pytest.mark.slow
def test_sigkill_at_random_points_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path):
  rng = np.random.default_rng(0)
  killed, kills = tmp_path / 'killed', []
  while len(kills) < 4:
    before = run_helpers.finished_steps(killed)
    process = subprocess.Popen(run_helpers.launch_args(killed, **OVERRIDES),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # Kill a random moment after a new checkpoint started: some land mid-save.
      assert run_helpers.wait_for(
          lambda: run_helpers.finished_steps(killed) != before or process.poll() is not None)
      time.sleep(rng.uniform(0.0, 1.5))
      process.send_signal(signal.SIGKILL)
      process.wait(timeout=30)
    finally:
      process.kill()
    saved = run_helpers.finished_steps(killed)
    kills.append(saved[-1] if saved else 0)
    if kills[-1] >= OVERRIDES['num_train_steps']:
      break
  assert len(kills) >= 3, kills  # At least three kill points landed mid-run.
  assert train.train_and_evaluate(run_helpers.tiny_config(**OVERRIDES), str(killed))['step'] == 60
  uninterrupted = tmp_path / 'uninterrupted'
  train.train_and_evaluate(run_helpers.tiny_config(**OVERRIDES), str(uninterrupted))
  run_helpers.assert_trees_equal(run_helpers.final_params(killed),
                                 run_helpers.final_params(uninterrupted))


# The fault matrix: a tiny 2-process run of 8 steps, checkpoints every 2, evaluation every 4.
MATRIX = dict(OVERRIDES, num_train_steps=8, checkpoint_every_steps=2, eval_every_steps=4,
              log_every_steps=2, peer_timeout_seconds=5)
MOMENTS = {'compile': 0, 'step': 3, 'eval': 4, 'save': 2}  # The step each fault waits for.
# The cells run by default: every pair of values (victim and moment, victim and way, moment
# and way) in 8 cells, killing the coordinator (process 0) mid-step and mid-save among them.
# FAULT_MATRIX=full runs all 16 (2 victims x 4 moments x 2 ways), about 3 minutes more.
PAIRWISE = {(0, 'compile', 'STOP'), (1, 'compile', 'KILL'), (0, 'step', 'KILL'),
            (1, 'step', 'STOP'), (0, 'eval', 'STOP'), (1, 'eval', 'KILL'),
            (0, 'save', 'KILL'), (1, 'save', 'STOP')}
CELLS = [cell for cell in itertools.product([0, 1], MOMENTS, ['KILL', 'STOP'])
         if os.environ.get('FAULT_MATRIX') == 'full' or cell in PAIRWISE]


@pytest.fixture(name='uninterrupted', scope='module')
def uninterrupted_fixture(tmp_path_factory):
  """The parameters of the matrix's run with no fault, two processes as in each cell."""
  workdir = tmp_path_factory.mktemp('uninterrupted') / 'run'
  procs = run_helpers.start_two_processes(workdir, MATRIX)
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], ''.join(map(run_helpers.failure_text, outputs))
  return run_helpers.final_params(workdir)


def test_the_default_cells_cover_every_pair_of_values():
  values = ([0, 1], list(MOMENTS), ['KILL', 'STOP'])
  for a, b in itertools.combinations(range(3), 2):
    assert {(cell[a], cell[b]) for cell in PAIRWISE} == set(
        itertools.product(values[a], values[b])), (a, b)
  assert len(PAIRWISE) == 8 and set(CELLS) >= PAIRWISE


def run_until_the_survivor_exits(procs, victim: int) -> tuple[str, float]:
  """(the survivor's output, seconds from the fault to its exit); the victim is killed."""
  survivor, fault_at = procs[1 - victim], []
  def read_victim():
    for line in procs[victim].stdout:
      if line.startswith('FAULT:'):
        fault_at.append(time.monotonic())
  reader = threading.Thread(target=read_victim, daemon=True)
  reader.start()
  try:
    output, _ = survivor.communicate(timeout=240)
    exited = time.monotonic()
  finally:
    for p in procs:
      p.kill()
    reader.join(timeout=10)
  assert fault_at, 'the fault was never injected:\n' + run_helpers.failure_text(output)
  return output, exited - fault_at[0]


@pytest.mark.slow
@pytest.mark.parametrize('victim, moment, way', CELLS,
                         ids=['-'.join(map(str, cell)) for cell in CELLS])
def test_a_lost_process_stops_the_other_cleanly_and_a_rerun_ends_as_if_uninterrupted(
    tmp_path, uninterrupted, victim, moment, way):
  """Survivor: exit 75 within 30 s, the one line, no abort; then a rerun of both resumes."""
  workdir = tmp_path / 'run'
  procs = run_helpers.start_two_processes(workdir, MATRIX,
                              fault=f'{victim}:{moment}:{way}:{MOMENTS[moment]}')
  output, seconds = run_until_the_survivor_exits(procs, victim)
  survivor = procs[1 - victim]
  assert survivor.returncode == 75, run_helpers.failure_text(output)
  assert seconds < 30, (seconds, run_helpers.failure_text(output))
  lines = [l for l in output.splitlines() if 'Lost peer process' in l]
  assert len(lines) == 1 and f'[{victim}] of 2' in lines[0], run_helpers.failure_text(output)
  assert 'Fatal Python error' not in output, run_helpers.failure_text(output)
  where = lines[0].split('resume from ')[1]
  resume_step = int(where.split()[1]) if where.startswith('step') else None
  saved = run_helpers.finished_steps(workdir)
  assert resume_step in (None, *saved), (where, saved)
  print(f'cell {victim}:{moment}:{way}: survivor exit 75 after {seconds:.1f} s')

  procs = run_helpers.start_two_processes(workdir, MATRIX)  # Rerun both.
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], ''.join(map(run_helpers.failure_text, outputs))
  if resume_step is not None:
    assert f'Resumed from step {resume_step}' in outputs[0], run_helpers.failure_text(outputs[0])
  assert run_helpers.finished_steps(workdir)[-1] == MATRIX['num_train_steps']
  run_helpers.assert_trees_equal(run_helpers.final_params(workdir), uninterrupted)


@pytest.fixture
def small_disk(tmp_path):
  """A 24 MB tmpfs mounted under tmp_path (needs root, as CI has)."""
  mount = tmp_path / 'disk'
  mount.mkdir()
  result = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', str(mount)],
                          capture_output=True, text=True)
  if result.returncode != 0:
    pytest.skip(f'mounting a tmpfs needs root here: {result.stderr.strip()}')
  yield mount
  subprocess.run(['umount', '-l', str(mount)], check=False)


@pytest.mark.slow
def test_full_disk_stops_the_run_and_the_last_checkpoint_restores(small_disk):
  workdir = small_disk / 'run'
  overrides = dict(OVERRIDES, num_train_steps=100_000, checkpoint_every_steps=5)
  process = subprocess.Popen(run_helpers.launch_args(workdir, **overrides), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  try:
    assert run_helpers.wait_for(lambda: run_helpers.finished_steps(workdir), timeout=240)
    saved = run_helpers.finished_steps(workdir)[-1]
    filler = small_disk / 'filler'
    with open(filler, 'wb') as f:  # Fill the disk: the next write fails with ENOSPC.
      try:
        while True:
          f.write(b'\0' * 2**20)
          f.flush()
      except OSError:
        pass
    output, _ = process.communicate(timeout=120)
  finally:
    process.kill()
  assert process.returncode not in (0, None), output[-3000:]
  assert 'No space left on device' in output, output[-3000:]
  os.remove(filler)
  params, meta = run_helpers.params_and_meta(workdir)  # Restores after the failure.
  assert meta['step'] >= saved and meta['step'] in run_helpers.finished_steps(workdir)
  assert all(np.all(np.isfinite(p)) for p in jax.tree_util.tree_leaves(params))
