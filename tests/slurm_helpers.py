"""The cluster tests' SLURM: whether one answers here, and small queries of it.

.ci/start_slurm.sh starts a one-node SLURM on this machine. Without one the cluster tests
skip, naming why; with VGG_JAX_REQUIRE_SLURM=1 (set by .ci/run) that skip is a failure.
"""

import os
import shutil
import subprocess

import pytest

START = 'sudo bash .ci/start_slurm.sh'


def why_no_slurm() -> str:
  """'' when a SLURM node here takes jobs; otherwise what is missing."""
  for tool in ('sbatch', 'squeue', 'scontrol', 'sinfo', 'srun'):
    if not shutil.which(tool):
      return f'no SLURM here: `{tool}` is not on PATH (start one with `{START}`)'
  result = subprocess.run(['sinfo', '--noheader', '--format=%T'], capture_output=True,
                          text=True, timeout=60, check=False)
  states = result.stdout.split()
  if result.returncode or not any(s.rstrip('*~#') in ('idle', 'mixed', 'allocated')
                                  for s in states):
    return (f'no SLURM node takes jobs (sinfo: {result.stderr.strip() or states}); start '
            f'one with `{START}`')
  return ''


def require_slurm():
  """Skips the test when no SLURM answers; fails instead under VGG_JAX_REQUIRE_SLURM=1."""
  reason = why_no_slurm()
  if reason and os.environ.get('VGG_JAX_REQUIRE_SLURM') == '1':
    pytest.fail(f'VGG_JAX_REQUIRE_SLURM=1, but {reason}')
  if reason:
    pytest.skip(reason)


def job_state(job_id: str) -> str:
  """squeue's state of the job ('' once SLURM has forgotten it)."""
  result = subprocess.run(['squeue', '--noheader', '--states=all', f'--jobs={job_id}',
                           '--format=%T'], capture_output=True, text=True, timeout=60,
                          check=False)
  return result.stdout.strip()


def cancel(job_ids):
  """Cancels the jobs a failed test left queued or running."""
  if job_ids:
    subprocess.run(['scancel', *job_ids], capture_output=True, timeout=60, check=False)
