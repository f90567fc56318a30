"""experiments/ablation_slurm.py: the job scripts, what a submission submits, --status.

The fast tests put stand-ins for sbatch, squeue, scancel, srun and scontrol on PATH; the
slow one runs a failing study on the real one-node SLURM (.ci/start_slurm.sh). The quick
digits study through SLURM, requeue included, is in tests/ablation_test.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import slurm_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from experiments import ablation_slurm  # pylint: disable=g-import-not-at-top,wrong-import-position


def write_tool(folder, name: str, body: str):
  path = folder / name
  path.write_text('#!/bin/bash\n' + body)
  path.chmod(0o755)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
  """sbatch, squeue, scancel, srun and scontrol stand-ins; calls logged in tmp_path/calls."""
  folder = tmp_path / 'bin'
  folder.mkdir()
  calls = tmp_path / 'calls'
  write_tool(folder, 'sbatch', f'n=$(( $(cat {tmp_path}/next 2>/dev/null || echo 100) + 1 ))\n'
             f'echo $n > {tmp_path}/next\necho "sbatch $*" >> {calls}\necho "$n;cluster"\n')
  write_tool(folder, 'squeue', f'cat {tmp_path}/queue 2>/dev/null || true\n')
  # scancel --signal=TERM JOB: SIGTERM to what the srun stand-in started.
  write_tool(folder, 'scancel', f'echo "scancel $*" >> {calls}\n'
             f'[ "$1" = --signal=TERM ] && kill -TERM $(cat {tmp_path}/srun.pid)\n')
  write_tool(folder, 'scontrol', f'echo "scontrol $*" >> {calls}\n')
  write_tool(folder, 'srun', f'echo $$ > {tmp_path}/srun.pid\n'
             'while [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
  monkeypatch.setenv('PATH', f'{folder}:{os.environ["PATH"]}')
  return tmp_path


def study(root) -> list[ablation_slurm.Job]:
  """A, then B warm-started from it, C on its own, and the report after all of them."""
  def job(name, **kwargs):
    return ablation_slurm.Job(name, str(root / name), ('python', '-m', 'study', f'--run={name}'),
                              **kwargs)
  return [job('A'), job('B', after=('A',)), job('C'),
          ablation_slurm.Job('report', str(root / 'report'),
                             ('python', '-m', 'study', '--report_only'), after_all=True)]


def sbatch_calls(root) -> list[str]:
  calls = root / 'calls'
  return [line for line in calls.read_text().splitlines()
          if line.startswith('sbatch')] if calls.exists() else []


def test_job_script_asks_for_the_resources_and_runs_from_the_repository(tmp_path):
  resources = ablation_slurm.Resources('gpu', 4, 8, 16, '2-00:00:00', 'vision', 'high',
                                       max_requeues=2, signal_seconds=120)
  job = ablation_slurm.Job('E_warm_seed0', str(tmp_path / 'E'), ('python', '-m', 'x', "--a=b c"),
                           nodes=4)
  script = ablation_slurm.job_script(job, resources, '/repo dir')
  for option in ('--partition=gpu', '--nodes=4', '--ntasks-per-node=1', '--gpus-per-node=8',
                 '--cpus-per-task=16', '--time=2-00:00:00', '--account=vision', '--qos=high',
                 '--requeue', '--signal=B:USR1@120', '--kill-on-invalid-dep=yes',
                 '--open-mode=append', f'--output={tmp_path}/E/slurm-%j.out'):
    assert f'#SBATCH {option}\n' in script
  assert "cd '/repo dir'\n" in script and "export PYTHONPATH='/repo dir'" in script
  assert "srun --kill-on-bad-exit=1 python -m x '--a=b c' &" in script
  plain = ablation_slurm.job_script(job, ablation_slurm.Resources(), '/repo')
  assert not any(f'--{name}=' in plain for name in ('partition', 'gpus-per-node', 'time',
                                                     'account', 'qos'))
  subprocess.run(['bash', '-n'], input=script, text=True, check=True)


def run_script(tmp_path, restarts: int, command: str, max_requeues: int = 2):
  """The job script of a job running `command` via the srun stand-in, started by bash."""
  job = ablation_slurm.Job('A', str(tmp_path / 'A'), ('bash', '-c', command))
  os.makedirs(job.workdir, exist_ok=True)
  script = tmp_path / 'A' / 'job.sh'
  script.write_text(ablation_slurm.job_script(
      job, ablation_slurm.Resources(max_requeues=max_requeues, signal_seconds=60), ROOT))
  env = dict(os.environ, SLURM_JOB_ID='7', SLURM_RESTART_COUNT=str(restarts))
  return job, subprocess.Popen(['bash', str(script)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)


def events(job) -> list[tuple]:
  return [(e['event'], e['restart'], e.get('rc'))
          for e in ablation_slurm.read_events(job.workdir, '7')]


def test_job_script_records_each_attempt_and_gives_up_past_the_limit(fake_slurm):
  job, process = run_script(fake_slurm, 0, 'exit 3')
  assert process.wait(timeout=30) == 3
  assert events(job) == [('start', 0, None), ('end', 0, 3)]
  job, process = run_script(fake_slurm / 'again', 3, 'echo must not run')
  output = process.communicate(timeout=30)[0]
  assert process.returncode == 1 and 'must not run' not in output
  assert 'Error: restarted 3 times, more than --slurm_max_requeues=2.' in output
  assert events(job) == [('end', 3, 1)]


# Stands in for a training run: saves and exits 143 on SIGTERM.
RUN = 'trap "echo saved; exit 143" TERM; echo started; while :; do sleep 0.1; done'


@pytest.mark.parametrize('restarts', [0, 2])
def test_time_limit_signal_saves_then_requeues_up_to_the_limit(fake_slurm, restarts):
  job, process = run_script(fake_slurm, restarts, RUN)
  assert process.stdout.readline() == 'started\n'
  process.send_signal(signal.SIGUSR1)  # What --signal=B:USR1@60 sends before the limit.
  output = process.communicate(timeout=30)[0]
  assert 'saved' in output
  calls = (fake_slurm / 'calls').read_text() if (fake_slurm / 'calls').exists() else ''
  if restarts < 2:
    assert process.returncode == 143
    assert calls == 'scancel --signal=TERM 7\nscontrol requeue 7\n'
    assert events(job) == [('start', 0, None), ('requeue', 0, 143)]
  else:  # The limit: the job fails, and its dependants are cancelled.
    assert process.returncode == 1 and calls == 'scancel --signal=TERM 7\n'
    assert 'Error: the time limit was reached after 2 requeues.' in output
    assert events(job) == [('start', 2, None), ('end', 2, 1)]


def test_submit_orders_the_jobs_by_their_dependencies(fake_slurm):
  jobs = study(fake_slurm)
  lines = ablation_slurm.submit(str(fake_slurm), jobs, ablation_slurm.Resources(), ROOT)
  assert lines == ['A: submitted job 101.', 'B: submitted job 102 (--dependency=afterok:101).',
                   'C: submitted job 103.',
                   'report: submitted job 104 (--dependency=afterany:101:102:103).']
  assert [call.split()[2] for call in sbatch_calls(fake_slurm)] == [
      '--job-name=ablation-A', '--job-name=ablation-B', '--job-name=ablation-C',
      '--job-name=ablation-report']
  record = json.load(open(fake_slurm / 'B' / 'slurm_job.json'))
  assert record['job_id'] == '102' and record['after'] == ['A']
  assert (fake_slurm / 'B' / 'slurm_job.sh').exists()


def test_a_second_submit_skips_done_and_queued_jobs(fake_slurm):
  jobs = study(fake_slurm)
  ablation_slurm.submit(str(fake_slurm), jobs, ablation_slurm.Resources(), ROOT)
  (fake_slurm / 'A' / 'done.json').write_text('{"step": 4}')
  (fake_slurm / 'queue').write_text('101|COMPLETED|None\n102|RUNNING|None\n'
                                    '103|FAILED|NonZeroExitCode\n104|PENDING|Dependency\n')
  lines = ablation_slurm.submit(str(fake_slurm), jobs, ablation_slurm.Resources(), ROOT)
  # C failed: submitted again; the queued report would not wait for it, so it is replaced.
  assert lines == ['A: done, skipped.', 'B: job 102 is queued or running already.',
                   'C: submitted job 105.',
                   'report: submitted job 106 (--dependency=afterany:102:105).']
  assert 'scancel 104' in (fake_slurm / 'calls').read_text()
  (fake_slurm / 'queue').write_text('102|RUNNING|None\n105|PENDING|Priority\n'
                                    '106|PENDING|Dependency\n')
  lines = ablation_slurm.submit(str(fake_slurm), jobs, ablation_slurm.Resources(), ROOT)
  assert len(sbatch_calls(fake_slurm)) == 6  # Nothing more.
  assert lines[-1] == 'report: job 106 is queued or running already.'


def test_max_jobs_shares_singleton_names_among_the_jobs(fake_slurm):
  jobs = study(fake_slurm)
  ablation_slurm.submit(str(fake_slurm), jobs, ablation_slurm.Resources(max_jobs=2), ROOT)
  names = [call.split()[2].split('=')[1] for call in sbatch_calls(fake_slurm)]
  assert len(set(names)) == 2 and all(name.startswith('ablation-') for name in names)
  # A and C run at once in the two slots; B, after A, in A's slot; the report after all.
  assert names[0] != names[2] and names[1] == names[0]
  dependencies = [call.split()[4] for call in sbatch_calls(fake_slurm)]
  assert dependencies == ['--dependency=singleton', '--dependency=afterok:101,singleton',
                          '--dependency=singleton',
                          '--dependency=afterany:101:102:103,singleton']


def test_last_error_line_prefers_the_traceback():
  log = ['I1203 step 2/4', 'Traceback (most recent call last):', '  raise ValueError("x")',
         'ValueError: boom', 'slurmstepd: error: *** JOB 5 CANCELLED ***', 'teardown done']
  assert ablation_slurm.last_error_line(log) == 'ValueError: boom'
  # The project's own errors are not all called ...Error: the traceback's end says which.
  named = ['Traceback (most recent call last):', '  File "x.py", line 1', '    raise',
           "vgg_jax.errors.NotFound: TFDS dataset 'c' is not prepared in /d.", 'Prepare it',
           'srun: error: vm: task 0: Exited with exit code 1']
  assert ablation_slurm.last_error_line(named) == (
      "vgg_jax.errors.NotFound: TFDS dataset 'c' is not prepared in /d.")
  assert ablation_slurm.last_error_line(log[-2:]) == 'slurmstepd: error: *** JOB 5 CANCELLED ***'
  assert ablation_slurm.last_error_line(['Error: 2 run(s) did not finish', 'srun: error: task 0: '
                                         'Exited with exit code 1']) == (
                                             'Error: 2 run(s) did not finish')
  # A user error is one `error: ...` line (vgg_jax.cli.run), then srun's own.
  assert ablation_slurm.last_error_line(["error: TFDS dataset 'c' is not prepared in /d.",
                                         'srun: error: vm: task 0: Exited with exit code 1']) == (
                                             "error: TFDS dataset 'c' is not prepared in /d.")
  assert ablation_slurm.last_error_line(['eval/top1_error 0.5']) == ''


def test_status_reads_squeue_and_the_jobs_files(fake_slurm, capsys):
  root, jobs = fake_slurm, study(fake_slurm)
  ablation_slurm.write_study(str(root), jobs)
  assert ablation_slurm.print_status(str(root)) == 0  # Nothing submitted: no squeue needed.
  assert all(' pending ' in line and 'not submitted' in line
             for line in capsys.readouterr().out.splitlines()[:4])
  ablation_slurm.submit(str(root), jobs, ablation_slurm.Resources(), ROOT)
  for name, rc in (('A', 1), ('C', None)):
    with open(root / name / 'slurm_events.jsonl', 'w') as f:
      f.write(json.dumps({'event': 'start', 'job_id': str(ord(name) - 64 + 100), 'restart': 0,
                          'time': time.time() - 65}) + '\n')
      if rc:
        f.write(json.dumps({'event': 'end', 'job_id': '101', 'restart': 0, 'time': time.time(),
                            'rc': rc}) + '\n')
  (root / 'A' / 'slurm-101.out').write_text('Traceback (most recent call last):\n'
                                            'FileNotFoundError: no data in /x\n')
  (root / 'C' / 'metrics.jsonl').write_text('{"step": 2}\n')
  (root / 'C' / 'slurm-103.out').write_text('I1203 Compiled ...; 50 steps in all.\n')
  (root / 'queue').write_text('101|FAILED|NonZeroExitCode\n'
                              '102|CANCELLED|DependencyNeverSatisfied\n'
                              '103|RUNNING|None\n104|PENDING|Dependency\n')
  assert ablation_slurm.print_status(str(root)) == 1
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].split()[:6] == ['A', 'failed', 'step', '-', 'job', '101']
  assert lines[0].endswith('FileNotFoundError: no data in /x')
  assert lines[1].split()[1] == 'failed' and lines[1].endswith('cancelled: A failed')
  assert lines[2].split()[:6] == ['C', 'running', 'step', '2/50', 'job', '103']
  assert lines[2].split()[6].startswith('00:01:0')  # Elapsed, from its start event.
  assert lines[3].split()[1] == 'pending' and lines[3].endswith('Dependency')
  assert lines[4] == '4 jobs: 0 done, 1 running, 1 pending, 2 failed (running: C 2/50)'


def test_submit_without_sbatch_says_how_to_get_slurm(tmp_path, monkeypatch):
  monkeypatch.setenv('PATH', str(tmp_path))
  with pytest.raises(ablation_slurm.SlurmError, match=r'`sbatch` is not on PATH\. .*'
                     r'sudo bash \.ci/start_slurm\.sh'):
    ablation_slurm.submit(str(tmp_path), study(tmp_path), ablation_slurm.Resources(), ROOT)


@pytest.mark.slow
def test_failed_run_is_named_and_its_dependants_cancelled(tmp_path):
  """cifar10 without its data on the real SLURM: A fails, D (warm from A) is cancelled,
  the report job runs, names both, and --status exits 1."""
  slurm_helpers.require_slurm()
  command = [sys.executable, '-m', 'experiments.ablation', '--preset=cifar10', '--quick',
             f'--data_dir={tmp_path / "no_data"}', '--variants=A,D', '--inits=warm',
             f'--workdir={tmp_path / "study"}', '--noreuse_host_memory']
  submit = subprocess.run(command + ['--launcher=slurm', '--wait'], cwd=ROOT, text=True,
                          capture_output=True, timeout=600)
  ids = [line.split('submitted job ')[1].split()[0].rstrip('.')
         for line in submit.stdout.splitlines() if 'submitted job' in line]
  try:
    assert submit.returncode == 1, submit.stdout + submit.stderr[-3000:]
    lines = submit.stdout.splitlines()[-4:]  # --wait ends with the status.
    assert lines[0].split()[:2] == ['A_seed0', 'failed']
    assert lines[0].endswith("error: TFDS dataset 'cifar10' is not prepared in "
                             f"{tmp_path}/no_data/cifar10/3.0.2.")
    assert lines[1].split()[:2] == ['D_warm_seed0', 'failed']
    assert lines[1].endswith('cancelled: A_seed0 failed')
    assert slurm_helpers.job_state(ids[1]) == 'CANCELLED'
    assert lines[2].split()[:2] == ['report', 'failed']
    assert lines[2].endswith('error: 2 run(s) did not finish, so no tables: A_seed0, '
                             f'D_warm_seed0 (python -m experiments.ablation --workdir='
                             f'{tmp_path}/study --status gives their errors).')
    status = subprocess.run(command + ['--status'], cwd=ROOT, text=True, capture_output=True,
                            timeout=300)
    assert status.returncode == 1 and status.stdout.splitlines()[-4:] == lines
  finally:
    slurm_helpers.cancel(ids)
