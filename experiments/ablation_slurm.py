"""The ablation on a SLURM cluster: each training run its own job, then one job for the tables.

experiments.ablation --launcher=slurm plans the study as the local launcher does and
hands each run to sbatch as a generated script: A, A-LRN and the Glorot-initialised nets
at once; each warm-started net after its source's job succeeded (afterok, with
--kill-on-invalid-dep=yes, so a failed source cancels it); the evaluations, Tables 3-6
and the report as one last job after all of them (afterany: it names the runs that
failed). Every job runs `python -m experiments.ablation ... --run=NAME` (or
--report_only): the local study's own code for that one step.

Preemption and time limits: every job is --requeue'd; a preempted or `scontrol requeue`d
run saves a checkpoint on SIGTERM and its next attempt resumes there. USR1, sent
--slurm_signal_seconds before the time limit, makes the job script stop the run the same
way and requeue the job itself. After --slurm_max_requeues restarts a job fails instead,
and SLURM cancels the jobs that need it. --slurm_max_jobs=N gives the jobs N names and
each job a `singleton` dependency, with which SLURM runs one job per name at a time.

Plain sbatch, not a submission library: submitit's job states come from `sacct`, which
needs SLURM's accounting database; the state here comes from squeue and from files the
jobs write. Each job's folder (the run's workdir; DIR/report for the last job) holds:
  slurm_job.sh        the script, with its #SBATCH lines
  slurm_job.json      the job id and the sbatch command, written at submission
  slurm_events.jsonl  each attempt's start and end (time, exit code, restart count)
  slurm-JOBID.out     the log; the attempts after a requeue append to it
  done.json           written when the job's work is finished
"""

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time

from absl import flags

from vgg_jax import files

_PARTITION = flags.DEFINE_string('slurm_partition', '', 'SLURM partition (default: the '
                                 "cluster's default).")
_NODES = flags.DEFINE_integer('slurm_nodes', 1, 'Nodes per training run: one process per node '
                              'with all its GPUs (--distributed=auto, as launch.py).',
                              lower_bound=1)
_GPUS = flags.DEFINE_integer('slurm_gpus_per_node', 0, 'GPUs per node (0: ask for none).',
                             lower_bound=0)
_CPUS = flags.DEFINE_integer('slurm_cpus_per_task', 1, 'CPUs of each process.', lower_bound=1)
_TIME = flags.DEFINE_string('slurm_time', '', "Time limit of each job, as sbatch's --time "
                            "('2-00:00:00'); a job that reaches it saves and is requeued.")
_ACCOUNT = flags.DEFINE_string('slurm_account', '', 'SLURM account to charge.')
_QOS = flags.DEFINE_string('slurm_qos', '', 'SLURM quality of service.')
_MAX_JOBS = flags.DEFINE_integer('slurm_max_jobs', 0, "At most this many of the study's jobs "
                                 'running at once (0: no limit).', lower_bound=0)
_MAX_REQUEUES = flags.DEFINE_integer('slurm_max_requeues', 3, 'Restarts of a job (preemption, '
                                     'requeue, time limit) before it counts as failed.',
                                     lower_bound=0)
_SIGNAL_SECONDS = flags.DEFINE_integer('slurm_signal_seconds', 300, 'Seconds before the time '
                                       'limit at which a job saves and requeues itself.',
                                       lower_bound=1)

STUDY = 'study.json'  # The study's jobs, for --status.
SCRIPT, RECORD, EVENTS, DONE = 'slurm_job.sh', 'slurm_job.json', 'slurm_events.jsonl', 'done.json'
# squeue's states of a job that will not run again; other known states may still run.
ENDED = frozenset({'BOOT_FAIL', 'CANCELLED', 'COMPLETED', 'DEADLINE', 'FAILED', 'NODE_FAIL',
                   'OUT_OF_MEMORY', 'PREEMPTED', 'REVOKED', 'SPECIAL_EXIT', 'TIMEOUT'})
RUNNING = frozenset({'RUNNING', 'COMPLETING', 'CONFIGURING', 'SIGNALING', 'STAGE_OUT'})
FIX = ('Run this on a SLURM login node, or start a one-node SLURM on this machine with '
       '`sudo bash .ci/start_slurm.sh` (docs/multihost.md).')


class SlurmError(RuntimeError):
  """sbatch or squeue is missing or refused; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Resources:
  """What each job asks SLURM for: the --slurm_* flags."""
  partition: str = ''
  nodes: int = 1  # Per training run.
  gpus_per_node: int = 0
  cpus_per_task: int = 1
  time: str = ''  # '' leaves the partition's default.
  account: str = ''
  qos: str = ''
  max_jobs: int = 0  # 0: no limit.
  max_requeues: int = 3
  signal_seconds: int = 300


def resources_from_flags() -> Resources:
  return Resources(_PARTITION.value, _NODES.value, _GPUS.value, _CPUS.value, _TIME.value,
                   _ACCOUNT.value, _QOS.value, _MAX_JOBS.value, _MAX_REQUEUES.value,
                   _SIGNAL_SECONDS.value)


@dataclasses.dataclass(frozen=True)
class Job:
  """One job of the study: a training run, or the report."""
  name: str  # The run's folder name, or 'report'.
  workdir: str  # Its files (above); done.json there once its work is finished.
  argv: tuple[str, ...]  # What it runs, from the repository root.
  after: tuple[str, ...] = ()  # Jobs (by name) that must succeed first.
  after_all: bool = False  # Starts once all the others have ended, however they ended.
  nodes: int = 1


def write_study(root: str, jobs: list[Job]):
  files.write_file_atomically(os.path.join(root, STUDY), json.dumps(
      {'jobs': [dataclasses.asdict(job) for job in jobs]}, indent=1))


def read_study(root: str) -> list[Job]:
  path = os.path.join(root, STUDY)
  if not os.path.exists(path):
    raise SlurmError(f'{path} does not exist: {root} holds no study started by '
                     'python -m experiments.ablation.')
  with open(path) as f:
    return [Job(**{**job, 'argv': tuple(job['argv']), 'after': tuple(job['after'])})
            for job in json.load(f)['jobs']]


def read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):  # Not yet, or being replaced.
    return None


def read_events(workdir: str, job_id: str) -> list[dict]:
  """The attempts' start/end events of job `job_id` (slurm_events.jsonl)."""
  try:
    with open(os.path.join(workdir, EVENTS)) as f:
      events = [json.loads(line) for line in f if line.strip().endswith('}')]
  except FileNotFoundError:
    return []
  return [event for event in events if event['job_id'] == job_id]


def job_script(job: Job, resources: Resources, repo: str) -> str:
  """The sbatch script of one job: its resources, then one attempt's bookkeeping."""
  options = [f'--output={job.workdir}/slurm-%j.out', '--open-mode=append', '--requeue',
             f'--signal=B:USR1@{resources.signal_seconds}', f'--nodes={job.nodes}',
             '--ntasks-per-node=1', f'--cpus-per-task={resources.cpus_per_task}',
             '--kill-on-invalid-dep=yes']
  for name, value in (('partition', resources.partition), ('time', resources.time),
                      ('gpus-per-node', resources.gpus_per_node),
                      ('account', resources.account), ('qos', resources.qos)):
    if value:
      options.append(f'--{name}={value}')
  return _TEMPLATE.format(
      name=job.name, options='\n'.join(f'#SBATCH {option}' for option in options),
      repo=shlex.quote(repo), events=shlex.quote(os.path.join(job.workdir, EVENTS)),
      max_requeues=resources.max_requeues, seconds=resources.signal_seconds,
      command=shlex.join(job.argv))


# USR1 (--signal=B:USR1@seconds) reaches this shell only: it sends SIGTERM to the run's
# processes on every node, which save a checkpoint and exit 143, and requeues the job. A preemption or
# `scontrol requeue` signals every process of the job, and SLURM requeues it itself.
_TEMPLATE = r"""#!/bin/bash
# {name}: one job of the ablation study, written by experiments.ablation --launcher=slurm.
{options}
set -u
cd {repo}
export PYTHONPATH={repo}${{PYTHONPATH:+:$PYTHONPATH}}
restarts=${{SLURM_RESTART_COUNT:-0}}
note() {{  # note EVENT [JSON FIELDS]: one line of slurm_events.jsonl.
  printf '{{"event": "%s", "job_id": "%s", "restart": %s, "time": %s%s}}\n' \
    "$1" "$SLURM_JOB_ID" "$restarts" "$(date +%s.%N)" "${{2:-}}" >>{events}
}}
if [ "$restarts" -gt {max_requeues} ]; then
  echo "Error: restarted $restarts times, more than --slurm_max_requeues={max_requeues}." >&2
  note end ', "rc": 1'
  exit 1
fi
note start ", \"node\": \"$(hostname -s)\""
time_limit=0
on_usr1() {{  # --signal=B:USR1@{seconds}: the time limit is near.
  time_limit=1
  echo "Time limit in {seconds} s: saving and requeueing."
  scancel --signal=TERM "$SLURM_JOB_ID"  # The run's processes (srun would end its step).
}}
trap on_usr1 USR1
trap 'echo "SIGTERM: the run saves a checkpoint and stops."' TERM
srun --kill-on-bad-exit=1 {command} &
child=$!
wait $child
rc=$?
while kill -0 $child 2>/dev/null; do wait $child; rc=$?; done  # A trap cut the wait short.
wait $child 2>/dev/null  # The run's own exit status, which bash keeps (127: already had).
last=$?
[ $last = 127 ] || rc=$last
if [ $time_limit = 1 ] && [ $rc = 143 ]; then
  if [ "$restarts" -lt {max_requeues} ]; then
    note requeue ', "rc": 143'
    scontrol requeue "$SLURM_JOB_ID"
    exit 143
  fi
  echo "Error: the time limit was reached after {max_requeues} requeues." >&2
  rc=1
fi
note end ", \"rc\": $rc"
exit $rc
"""


def check_tool(name: str):
  if not shutil.which(name):
    raise SlurmError(f'--launcher=slurm: `{name}` is not on PATH. {FIX}')


def queue() -> dict[str, tuple[str, str]]:
  """{job id: (state, reason)} of this user's jobs that SLURM still knows."""
  check_tool('squeue')
  result = subprocess.run(['squeue', '--me', '--states=all', '--noheader',
                           '--format=%i|%T|%r'], capture_output=True, text=True, timeout=120,
                          check=False)
  if result.returncode:
    raise SlurmError(f'squeue failed: {result.stderr.strip()} {FIX}')
  rows = (line.split('|') for line in result.stdout.splitlines() if line.count('|') == 2)
  return {job_id: (state, reason) for job_id, state, reason in rows}


def alive_job(job: Job, known) -> str | None:
  """The id of the job's queued or running SLURM job, if it has one."""
  record = read_json(os.path.join(job.workdir, RECORD)) or {}
  state = known.get(record.get('job_id'), ('',))[0]
  return record['job_id'] if state and state not in ENDED else None


def is_done(job: Job) -> bool:
  """done.json exists; the report's, written with the same flags (argv after `-m MODULE`)."""
  done = read_json(os.path.join(job.workdir, DONE))
  return done is not None and (job.name != 'report' or done.get('flags') == list(job.argv[3:]))


def throttle_slots(jobs: list[Job], to_submit: list[Job], max_jobs: int) -> dict[str, int]:
  """A job name (slot) for each new job: SLURM's singleton dependency runs one per name.

  With max_jobs names, at most max_jobs jobs run at once. Each job goes to the slot where
  it could start first if every job took the same time, after the jobs it depends on.
  """
  free, finish, slots = [0] * max_jobs, {}, {}
  for job in to_submit:
    needs = [j.name for j in jobs if j.name != job.name] if job.after_all else job.after
    ready = max((finish.get(name, 0) for name in needs), default=0)
    slot = min(range(max_jobs), key=lambda k: (max(free[k], ready), k))
    free[slot] = finish[job.name] = max(free[slot], ready) + 1
    slots[job.name] = slot
  return slots


@contextlib.contextmanager
def study_lock(root: str):
  """One submission of a study at a time: two at once could submit a run twice."""
  with open(os.path.join(root, '.submit.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def sbatch(job: Job, resources: Resources, repo: str, options: list[str]) -> str:
  """Writes the job's script and record, submits it; returns the job id."""
  os.makedirs(job.workdir, exist_ok=True)
  script = os.path.join(job.workdir, SCRIPT)
  files.write_file_atomically(script, job_script(job, resources, repo))
  command = ['sbatch', '--parsable', *options, script]
  result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
  if result.returncode:
    raise SlurmError(f'sbatch refused {job.name}: {result.stderr.strip()} '
                     f'(the command: {shlex.join(command)})')
  job_id = result.stdout.strip().split(';')[0]
  files.write_file_atomically(os.path.join(job.workdir, RECORD), json.dumps(
      {'job_id': job_id, 'name': job.name, 'sbatch': command, 'after': list(job.after),
       'submitted': time.time()}))
  return job_id


def dependency(job: Job, ids: dict[str, str]) -> str:
  """sbatch's --dependency for the job, given the ids of the jobs queued or running."""
  if job.after_all:
    others = [job_id for name, job_id in ids.items() if name != job.name]
    return 'afterany:' + ':'.join(others) if others else ''
  waits = [ids[name] for name in job.after if name in ids]  # The rest are done.
  return 'afterok:' + ':'.join(waits) if waits else ''


def jobs_to_submit(jobs: list[Job], ids: dict[str, str]) -> list[Job]:
  """The runs neither done nor queued, then the report unless it is done, or queued while
  no run is to be submitted."""
  runs = [job for job in jobs if job.name != 'report' and job.name not in ids and
          not is_done(job)]
  report = next(job for job in jobs if job.name == 'report')
  if runs or not (is_done(report) or 'report' in ids):
    return runs + [report]
  return runs


def submit_job(job: Job, ids: dict[str, str], name: str, singleton: bool,
               resources: Resources, repo: str) -> str:
  """Submits one job after the ones it needs (ids: those queued or running); its line."""
  if job.name == 'report':  # An earlier submission's tables are made again.
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(job.workdir, DONE))
  needs = ','.join(filter(None, [dependency(job, ids), 'singleton' if singleton else '']))
  options = [f'--job-name={name}', f'--comment={job.name}']
  ids[job.name] = sbatch(job, resources, repo,
                         options + ([f'--dependency={needs}'] if needs else []))
  return f'{job.name}: submitted job {ids[job.name]}' + (
      f' (--dependency={needs}).' if needs else '.')


def submit(root: str, jobs: list[Job], resources: Resources, repo: str) -> list[str]:
  """Submits the study's jobs that are neither done nor queued; one line per job."""
  check_tool('sbatch')
  with study_lock(root):
    known = queue()
    ids = {job.name: job_id for job in jobs if (job_id := alive_job(job, known))}
    todo = jobs_to_submit(jobs, ids)
    if 'report' in ids and any(job.name == 'report' for job in todo):
      # Queued before runs that are submitted now: it would not wait for them.
      subprocess.run(['scancel', ids.pop('report')], check=False, timeout=120)
    slots = throttle_slots(jobs, todo, resources.max_jobs) if resources.max_jobs else {}
    study = hashlib.sha1(root.encode()).hexdigest()[:8]
    lines = []
    for job in jobs:
      if job in todo:
        name = f'ablation-{study}-{slots[job.name]}' if slots else f'ablation-{job.name}'
        lines.append(submit_job(job, ids, name, bool(slots), resources, repo))
      elif job.name in ids:
        lines.append(f'{job.name}: job {ids[job.name]} is queued or running already.')
      else:
        lines.append(f'{job.name}: done, skipped.')
  return lines


@dataclasses.dataclass(frozen=True)
class State:
  """Where one job of the study stands: a line of --status."""
  name: str
  state: str  # 'pending', 'running', 'done' or 'failed'.
  step: str  # 'N/M' ('?' while M is unknown), '-' before the first step.
  job_id: str  # '-' when never submitted.
  elapsed: float | None  # Seconds, all attempts together; None when unknown.
  detail: str  # Why it is pending; the last error line when it failed.


def tail(path: str, size: int = 1 << 18) -> list[str]:
  """The last `size` bytes of a text file, as lines; [] when it does not exist."""
  try:
    with open(path, 'rb') as f:
      f.seek(max(0, os.path.getsize(path) - size))
      return f.read().decode(errors='replace').splitlines()
  except FileNotFoundError:
    return []


_EXCEPTION = re.compile(r'^[\w.]*(Error|Exception|Exit|Interrupt)(: .*)?$')
_USER_ERROR = re.compile(r'^error: ')  # vgg_jax.cli.run's line for a user error.
_ERROR = re.compile(r'\berror\b', re.IGNORECASE)


def last_error_line(log_lines: list[str]) -> str:
  """A traceback's last line (the exception, whatever its class is called), else a line
  like one, else a user error's `error: ...` line, else the last line that says error,
  else ''."""
  ends, in_traceback = [], False
  for line in log_lines:
    if line.startswith('Traceback (most recent call last)'):
      in_traceback = True
    elif in_traceback and line.strip() and not line.startswith((' ', '\t')):
      ends.append(line.strip())  # The first unindented line after the frames.
      in_traceback = False
  if ends:
    return ends[-1]
  for pattern in (_EXCEPTION, _USER_ERROR, _ERROR):
    found = [line.strip() for line in log_lines if pattern.search(line)]
    if found:
      return found[-1]
  return ''


def progress(job: Job, log_lines: list[str]) -> str:
  """'step/total' of a training run: done.json, metrics.jsonl and the log's first line."""
  done = read_json(os.path.join(job.workdir, DONE)) or {}
  if 'step' in done:
    return f"{done['step']}/{done['step']}"
  rows = [line for line in tail(os.path.join(job.workdir, 'metrics.jsonl'), 4096)
          if line.endswith('}')]
  step = json.loads(rows[-1])['step'] if rows else 0
  totals = [m.group(1) for line in log_lines if (m := re.search(r'(\d+) steps in all', line))]
  return f"{step}/{totals[-1] if totals else '?'}" if step or totals else '-'


def elapsed(events: list[dict], running: bool) -> float | None:
  """Seconds of the attempts whose start and end were recorded, and of a running one."""
  total, start = None, None
  for event in events:
    if event['event'] == 'start':
      start = event['time']
    elif start is not None:
      total, start = (total or 0.0) + event['time'] - start, None
  if running and start is not None:
    total = (total or 0.0) + time.time() - start
  return total


def why_failed(job: Job, events, slurm_state: str, log_lines, failed: list[str]) -> str:
  """The last error line of the log; 'cancelled: X failed' when it never started."""
  if not any(event['event'] == 'start' for event in events):
    if failed and not job.after_all:
      return f"cancelled: {', '.join(failed)} failed"
    return f'never started ({slurm_state or "no longer in squeue"})'
  line = last_error_line(log_lines)
  ends = [event for event in events if 'rc' in event]
  code = f"exit {ends[-1]['rc']}" if ends else 'no exit recorded'
  return line or f'{slurm_state or "ended"} without done.json, {code}'


def job_state(job: Job, known, states: dict[str, State]) -> State:
  """The job's state from its files and, while SLURM has it, squeue."""
  record = read_json(os.path.join(job.workdir, RECORD)) or {}
  job_id = record.get('job_id', '')
  slurm_state, reason = known.get(job_id, ('', ''))
  events = read_events(job.workdir, job_id) if job_id else []
  log_lines = tail(os.path.join(job.workdir, f'slurm-{job_id}.out')) if job_id else []
  make = functools.partial(State, job.name, step=progress(job, log_lines),
                           job_id=job_id or '-',
                           elapsed=elapsed(events, slurm_state in RUNNING))
  if is_done(job):
    return make('done', detail='')
  if slurm_state in RUNNING:
    return make('running', detail='')
  if slurm_state and slurm_state not in ENDED:
    restarts = sum(event['event'] == 'start' for event in events)
    return make('pending', detail=f'{reason}' + (f', restarted {restarts - 1}x'
                                                  if restarts > 1 else ''))
  if not job_id:
    return make('pending', detail='not submitted')
  needs = [name for name in states if job.after_all] or job.after
  failed = [name for name in needs if states[name].state == 'failed']
  return make('failed', detail=why_failed(job, events, slurm_state, log_lines, failed))


def study_states(root: str) -> list[State]:
  """Every job of the study in DIR, in the order they were planned."""
  jobs = read_study(root)
  submitted = any(os.path.exists(os.path.join(job.workdir, RECORD)) for job in jobs)
  known = queue() if submitted else {}
  states = {}
  for job in jobs:
    states[job.name] = job_state(job, known, states)
  return list(states.values())


def format_seconds(seconds: float | None) -> str:
  if seconds is None:
    return '-'
  return time.strftime('%H:%M:%S', time.gmtime(seconds)) if seconds < 86400 else (
      f'{seconds / 86400:.1f} days')


def status_lines(states: list[State]) -> list[str]:
  width = max(len(state.name) for state in states)
  return [f'{s.name:<{width}}  {s.state:<7}  step {s.step:>9}  job {s.job_id:<8}  '
          f'{format_seconds(s.elapsed):>8}  {s.detail}'.rstrip() for s in states]


def summary(states: list[State]) -> str:
  """The progress line: counts of each state, and the running jobs' steps."""
  counts = {name: sum(s.state == name for s in states)
            for name in ('done', 'running', 'pending', 'failed')}
  running = [f'{s.name} {s.step}' for s in states if s.state == 'running']
  return (f"{len(states)} jobs: " + ', '.join(f'{n} {name}' for name, n in counts.items()) +
          (f" (running: {', '.join(running)})" if running else ''))


def print_status(root: str) -> int:
  """Prints one line per job and the summary; 1 when a job failed, else 0."""
  states = study_states(root)
  print('\n'.join(status_lines(states)))
  print(summary(states))
  return int(any(s.state == 'failed' for s in states))


def follow(root: str, poll_seconds: float = 5.0) -> int:
  """Prints the progress line as it changes until no job is queued or running; then the
  status (print_status's exit code)."""
  last = ''
  while True:
    states = study_states(root)
    line = summary(states)
    if line != last:
      print(f"{time.strftime('%H:%M:%S')}  {line}", flush=True)
      last = line
    if not any(s.state == 'running' or (s.state == 'pending' and s.job_id != '-')
               for s in states):
      return print_status(root)
    time.sleep(poll_seconds)
