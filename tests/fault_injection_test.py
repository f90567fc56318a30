"""Fault injection: kills at random points, a lost peer process. Run: pytest -m slow -k fault."""

import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from vgg_jax import checkpointing
from vgg_jax import train
from run_helpers import failure_text, finished_steps, free_port, wait_for  # tests/ is on sys.path

OVERRIDES = dict(num_train_steps=60, checkpoint_every_steps=3, eval_every_steps=1000,
                 log_every_steps=3)


@pytest.mark.slow
def test_sigkill_at_random_points_ends_bitwise_equal_to_an_uninterrupted_run(
    tmp_path, tiny_config, launch_args, final_params, assert_trees_equal):
  rng = np.random.default_rng(0)
  killed, kills = tmp_path / 'killed', []
  while len(kills) < 4:
    before = finished_steps(killed)
    process = subprocess.Popen(launch_args(killed, **OVERRIDES), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:  # Kill a random moment after a new checkpoint started: some land mid-save.
      assert wait_for(lambda: finished_steps(killed) != before or process.poll() is not None)
      time.sleep(rng.uniform(0.0, 1.5))
      process.send_signal(signal.SIGKILL)
      process.wait(timeout=30)
    finally:
      process.kill()
    kills.append(finished_steps(killed)[-1] if finished_steps(killed) else 0)
    if kills[-1] >= OVERRIDES['num_train_steps']:
      break
  assert len(kills) >= 3, kills  # At least three kill points landed mid-run.
  assert train.train_and_evaluate(tiny_config(**OVERRIDES), str(killed))['step'] == 60
  uninterrupted = tmp_path / 'uninterrupted'
  train.train_and_evaluate(tiny_config(**OVERRIDES), str(uninterrupted))
  assert_trees_equal(final_params(killed), final_params(uninterrupted))


def start_two_processes(workdir, launch_args, overrides):
  port, env = free_port(), dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  return [subprocess.Popen(
      launch_args(workdir, **overrides) + [
          '--distributed=explicit', f'--coordinator_address=127.0.0.1:{port}',
          '--num_processes=2', f'--process_id={i}', '--cpu_collectives=gloo'],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]


@pytest.mark.slow
def test_a_lost_peer_stops_the_other_cleanly_and_a_rerun_resumes(tmp_path, launch_args):
  overrides = dict(OVERRIDES, num_train_steps=100_000, checkpoint_every_steps=10)
  workdir = tmp_path / 'run'
  procs = start_two_processes(workdir, launch_args, overrides)
  try:
    assert wait_for(lambda: finished_steps(workdir), timeout=240)
    procs[1].send_signal(signal.SIGKILL)
    start = time.time()
    output, _ = procs[0].communicate(timeout=60)
    took = time.time() - start
  finally:
    for p in procs:
      p.kill()
  assert procs[0].returncode == 75, failure_text(output)
  assert took < 30, took
  lines = [l for l in output.splitlines() if 'Lost peer process' in l]
  assert len(lines) == 1 and 'resume from step' in lines[0], failure_text(output)
  resume_step = int(lines[0].split('resume from step ')[1].split()[0])
  assert 'Fatal Python error' not in output and 'Terminating process' not in output

  overrides['num_train_steps'] = resume_step + 4  # Rerun both: resumes and finishes.
  procs = start_two_processes(workdir, launch_args, overrides)
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], ''.join(map(failure_text, outputs))
  assert f'Resumed from step {resume_step}' in outputs[0]
  assert finished_steps(workdir)[-1] == resume_step + 4


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
def test_full_disk_stops_the_run_and_the_last_checkpoint_restores(small_disk, launch_args):
  workdir = small_disk / 'run'
  overrides = dict(OVERRIDES, num_train_steps=100_000, checkpoint_every_steps=5)
  process = subprocess.Popen(launch_args(workdir, **overrides), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  try:
    assert wait_for(lambda: finished_steps(workdir), timeout=240)
    saved = finished_steps(workdir)[-1]
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
  params, meta = checkpointing.load_params(str(workdir))  # Restores after the failure.
  assert meta['step'] >= saved and meta['step'] in finished_steps(workdir)
  assert all(np.all(np.isfinite(p)) for p in jax.tree_util.tree_leaves(params))
