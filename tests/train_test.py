"""Tests for vgg_jax.training.train and vgg_jax.checkpointing (8 fake CPU devices)."""

import csv
import glob
import gzip
import json
import os
import shutil
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
import pytest

import run_helpers  # tests/ is on sys.path
from vgg_jax import checkpointing
from vgg_jax.data import iterators
from vgg_jax import models
from vgg_jax import sharding
from vgg_jax.training import optim
from vgg_jax.training import steps
from vgg_jax.training import train
from vgg_jax.training import warm_start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_batch(config, size=16):
  return next(iterators.create_train_iterator(
      config.data, image_size=32, global_batch_size=size, seed=0))


def create_optimizer(config):
  """config.optimizer's optax chain, for 10 steps an epoch and 100 in all."""
  return optim.create_optimizer(optim.OptimizerConfig.from_config(config.optimizer), 10, 100)


def initial_state(config, model, tx, mesh):
  """warm_start.initial_state with config's warm start (init_from, init_layers)."""
  return warm_start.initial_state(model, tx, mesh, jax.random.key(0), config.init_from,
                             config.init_layers)


def setup(config, mesh):
  model = models.create_model(config.model)
  tx = create_optimizer(config)
  state = jax.jit(lambda r: steps.create_train_state(model, tx, r),
                  out_shardings=sharding.replicated(mesh))(jax.random.key(0))
  return model, tx, state


def run_steps(config, mesh, batches, accum_steps=1):
  """The variables ({'params'} and, for batch-norm nets, 'batch_stats') after the steps."""
  model, tx, state = setup(config, mesh)
  step = steps.jit_train_step(model, tx, mesh, accum_steps)
  for batch in batches:
    state, _ = step(state, sharding.make_global_batch(batch, mesh), jax.random.key(1))
  return jax.device_get(state.variables)


@pytest.mark.parametrize('batch_norm', [False, True])
def test_sharded_step_equals_single_device_step(batch_norm):
  assert jax.device_count() == 8
  config = run_helpers.tiny_config(**{'model.batch_norm': batch_norm})
  batches = [digits_batch(config) for _ in range(3)]
  sharded = run_steps(config, sharding.create_mesh(), batches)
  single = run_steps(config, Mesh(np.asarray(jax.devices()[:1]), ('data',)), batches)
  # Same maths, different reduction order across devices: float32 round-off only. With
  # batch norm this also says the batch statistics are the global batch's, not each
  # device's 2 examples'.
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         sharded, single)
  fresh = jax.device_get(setup(config, sharding.create_mesh())[2].variables)
  assert not np.allclose(sharded['params']['conv1_1']['kernel'],
                         fresh['params']['conv1_1']['kernel'])
  assert ('batch_stats' in sharded) == batch_norm
  if batch_norm:  # Running statistics moved from their initial 0 / 1.
    assert set(sharded['batch_stats']) == {n for n in sharded['params'] if n.startswith('bn')}
    assert not np.allclose(sharded['batch_stats']['bn2_1']['mean'], 0)
    assert not np.allclose(sharded['batch_stats']['bn2_1']['var'], 1)


def test_batch_norm_statistics_are_the_global_batchs():
  """One step from fresh state: running mean = 0.1 * the batch mean of conv1_1's output."""
  config = run_helpers.tiny_config(**{'model.batch_norm': True})
  batch = digits_batch(config)
  variables = run_steps(config, sharding.create_mesh(), [batch])
  model, _, state = setup(config, sharding.create_mesh())
  conv = model.apply(jax.device_get(state.variables), batch['images'], 'conv1_1',
                     method=models.VGG.features)['conv1_1']
  np.testing.assert_allclose(variables['batch_stats']['bn1_1']['mean'],
                             0.1 * np.mean(conv, axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)


def test_accumulation_equals_one_big_batch():
  config = run_helpers.tiny_config(**{'model.dropout_rate': 0.0})
  mesh = sharding.create_mesh()
  batches = [digits_batch(config, 32) for _ in range(2)]
  big = run_steps(config, mesh, batches)
  accumulated = run_steps(config, mesh, batches, accum_steps=2)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         big, accumulated)


def test_after_backward_keeps_gradients_and_spreads_non_finite_ones():
  grads = {'conv1_1': {'bias': jnp.array([0.5, -2.0]), 'kernel': jnp.full((3, 3, 3, 2), 3.0)},
           'fc8': {'bias': jnp.array([1e-30, -7.0]), 'kernel': jnp.arange(6.0).reshape(3, 2)}}
  same = steps.after_backward(grads, 'conv1_1')
  jax.tree_util.tree_map(np.testing.assert_array_equal, same, grads)
  grads['conv1_1']['bias'] = jnp.array([jnp.nan, 1.0])
  poisoned = steps.after_backward(grads, 'conv1_1')
  assert all(np.isnan(g).all() for g in jax.tree_util.tree_leaves(poisoned))


def test_plateau_schedule_in_training_lowers_the_lr(tmp_path):
  # lr 1e-9: the eval error cannot improve, so each eval after the first decays.
  config = run_helpers.tiny_config(**{'optimizer.schedule': 'plateau',
                                      'optimizer.learning_rate': 1e-9,
                                      'optimizer.plateau_patience': 1},
                                   num_train_steps=24, eval_every_steps=4, log_every_steps=1,
                                   checkpoint_every_steps=100)
  train.train_and_evaluate(config, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  rates = [r['train/learning_rate'] for r in rows if 'train/learning_rate' in r]
  assert rates[:4] == pytest.approx([1e-9] * 4)
  distinct = sorted(set(np.round(np.log10(rates)).astype(int)))
  assert distinct == [-12, -11, -10, -9]  # Three divisions by 10, no more.


@pytest.fixture(name='tiny_run', scope='module')
def tiny_run_fixture(tmp_path_factory):
  """(workdir, result) of tiny_config's 8 steps (checkpoints at 4 and 8), trained once for
  the tests that read it; those that change it work on a copy (copy_run)."""
  workdir = tmp_path_factory.mktemp('tiny_run')
  return workdir, train.train_and_evaluate(run_helpers.tiny_config(), str(workdir))


def copy_run(tiny_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_run[0], workdir)
  return workdir


def test_train_writes_metrics_checkpoints_and_config(tiny_run, tmp_path):
  workdir, result = tiny_run
  assert result['step'] == 8 and not result['preempted']
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  train_rows = [r for r in rows if 'train/loss' in r]
  eval_rows = [r for r in rows if 'eval/top1_error' in r]
  assert [r['step'] for r in train_rows] == [4, 8] and [r['step'] for r in eval_rows] == [4, 8]
  for key in ('train/loss', 'train/top1_error', 'train/learning_rate',
              'train/images_per_second'):
    assert np.isfinite(train_rows[0][key])
  assert {'eval/loss', 'eval/top5_error'} <= set(eval_rows[0])
  assert os.listdir(workdir / 'tensorboard')
  assert json.load(open(workdir / 'config.json'))['model']['variant'] == 'A'
  params, meta = run_helpers.params_and_meta(workdir)
  assert meta['step'] == 8 and meta['data_position'] == 8 * 16
  assert meta['config']['model']['width'] == 0.0625 and meta['class_names'][3] == '3'
  assert set(params) == {'conv1_1', 'conv2_1', 'conv3_1', 'conv3_2', 'conv4_1', 'conv4_2',
                         'conv5_1', 'conv5_2', 'fc6', 'fc7', 'fc8'}
  # A second run on the same workdir resumes at the end and does nothing more.
  again = copy_run(tiny_run, tmp_path)
  assert train.train_and_evaluate(run_helpers.tiny_config(), str(again))['step'] == 8
  assert sorted(os.listdir(again / 'checkpoints')) == sorted(os.listdir(workdir / 'checkpoints'))


def test_batch_norm_run_checkpoints_its_statistics_and_resumes_bitwise(tmp_path):
  config = run_helpers.tiny_config(**{'model.batch_norm': True})
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
  half = run_helpers.tiny_config(**{'model.batch_norm': True, 'num_train_steps': 4})
  train.train_and_evaluate(half, str(tmp_path / 'resumed'))
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert resumed['eval/top1_error'] == straight['eval/top1_error']
  a, meta = checkpointing.load_variables(str(tmp_path / 'straight'))
  b, _ = checkpointing.load_variables(str(tmp_path / 'resumed'))
  assert set(a) == {'params', 'batch_stats'} and meta['config']['model']['batch_norm']
  assert set(a['batch_stats']) == {f'bn{n[4:]}' for n in a['params'] if n.startswith('conv')}
  run_helpers.assert_trees_equal(a, b)


def test_checkpoint_restores_with_plain_orbax(tiny_run):
  import orbax.checkpoint as ocp
  with ocp.CheckpointManager(tiny_run[0] / 'checkpoints', item_names=('state', 'meta')) as mngr:
    restored = mngr.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                       meta=ocp.args.JsonRestore()))
  assert restored['state']['params']['fc8']['kernel'].shape == (32, 10)
  assert int(restored['state']['step']) == 4 and restored['meta']['step'] == 4
  # A plain net saves the tree it saved before batch norm existed: old checkpoints restore.
  assert set(restored['state']) == {'step', 'params', 'opt_state'}


def test_corrupt_latest_checkpoint_falls_back(tiny_run, tmp_path, caplog):
  config = run_helpers.tiny_config()
  workdir = copy_run(tiny_run, tmp_path)
  for root, _, files in os.walk(workdir / 'checkpoints' / '8' / 'state'):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'half-written')
  config.num_train_steps = 12
  result = train.train_and_evaluate(config, str(workdir))
  assert 'Checkpoint at step 8' in caplog.text and 'falling back' in caplog.text
  assert result['step'] == 12
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert [r['step'] for r in rows if 'train/loss' in r] == [4, 8, 12]  # Redone from 4.
  assert os.path.isdir(workdir / 'checkpoints' / 'corrupt_step_8')  # Kept, set aside.


def test_torn_metrics_line_is_dropped_on_resume(tiny_run, tmp_path, caplog):
  workdir = copy_run(tiny_run, tmp_path)
  lines = len(open(workdir / 'metrics.jsonl').readlines())
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 9, "train/lo')  # A crash while the next line was written.
  result = train.train_and_evaluate(run_helpers.tiny_config(num_train_steps=12), str(workdir))
  assert result['step'] == 12
  assert f'metrics.jsonl line {lines + 1} is torn' in caplog.text
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert [r['step'] for r in rows if 'train/loss' in r] == [4, 8, 12]


def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  config = run_helpers.tiny_config(**{'optimizer.learning_rate': 1e12,
                                      'optimizer.schedule': 'plateau'},
                                   num_train_steps=30, log_every_steps=1,
                                   checkpoint_every_steps=1, eval_every_steps=100)
  with pytest.raises(FloatingPointError, match=r'at step (\d+): training stopped') as error:
    train.train_and_evaluate(config, str(tmp_path))
  bad_step = int(error.value.args[0].split('at step ')[1].split(':')[0])
  params, meta = run_helpers.params_and_meta(tmp_path)
  assert meta['step'] == bad_step - 1
  assert all(np.all(np.isfinite(p)) for p in jax.tree_util.tree_leaves(params))


@pytest.fixture(scope='module')
def net_a(tmp_path_factory):
  """Workdir of a (2-step) finished net-A run."""
  workdir = tmp_path_factory.mktemp('net_a')
  train.train_and_evaluate(run_helpers.tiny_config(num_train_steps=2), str(workdir))
  return workdir


def test_warm_start_copies_exactly_the_seven_layers(net_a):
  a_params = run_helpers.final_params(str(net_a))
  config = run_helpers.tiny_config(**{'model.variant': 'D', 'init_from': str(net_a)})
  mesh = sharding.create_mesh()
  model = models.create_model(config.model)
  tx = create_optimizer(config)
  warm = jax.device_get(initial_state(config, model, tx, mesh).params)
  config.init_from = ''
  fresh = jax.device_get(initial_state(config, model, tx, mesh).params)
  copied = set(config.init_layers)
  assert copied == {'conv1_1', 'conv2_1', 'conv3_1', 'conv3_2', 'fc6', 'fc7', 'fc8'}
  for layer in warm:
    expected = a_params[layer] if layer in copied else fresh[layer]
    run_helpers.assert_trees_equal(warm[layer], expected)
  assert not np.array_equal(a_params['conv1_1']['kernel'], fresh['conv1_1']['kernel'])


def test_warm_start_errors(tmp_path, net_a):
  mesh = sharding.create_mesh()
  config = run_helpers.tiny_config(**{'model.variant': 'D', 'model.width': 0.125,
                                      'init_from': str(net_a)})
  model = models.create_model(config.model)
  tx = create_optimizer(config)
  # Another width: refused where the config enters, before the run writes anything,
  # naming the flag that fits; past that, the copy itself refuses the shapes.
  with pytest.raises(ValueError, match='width=0.0625 but this net width=0.125; .* set '
                     '--config.model.width=0.0625'):
    warm_start.with_source(config)
  with pytest.raises(ValueError, match="layer 'conv1_1' has shapes .* --config.init_layers"):
    initial_state(config, model, tx, mesh)
  config.init_from = str(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match='No checkpoints in'):
    initial_state(config, model, tx, mesh)
  config = run_helpers.tiny_config(**{'model.batch_norm': True, 'init_from': str(net_a)})
  with pytest.raises(ValueError, match='is not a batch-norm net but config.model.batch_norm'):
    initial_state(config, models.create_model(config.model), tx, mesh)


@pytest.fixture(scope='module')
def bn_net_a(tmp_path_factory):
  """The workdir of a tiny batch-norm net A trained 2 steps."""
  workdir = tmp_path_factory.mktemp('bn_net_a')
  config = run_helpers.tiny_config(**{'model.batch_norm': True, 'num_train_steps': 2})
  train.train_and_evaluate(config, str(workdir))
  return workdir


def test_batch_norm_warm_start_copies_each_convs_norm_and_statistics(bn_net_a):
  source, _ = checkpointing.load_variables(str(bn_net_a))
  config = run_helpers.tiny_config(**{'model.batch_norm': True, 'model.variant': 'B',
                                      'init_from': str(bn_net_a), 'init_layers': ('conv1_1',)})
  model = models.create_model(config.model)
  tx = create_optimizer(config)
  state = jax.device_get(initial_state(config, model, tx, sharding.create_mesh()))
  for collection, layer in (('params', 'conv1_1'), ('params', 'bn1_1'),
                            ('batch_stats', 'bn1_1')):
    jax.tree_util.tree_map(np.testing.assert_array_equal, state.variables[collection][layer],
                           source[collection][layer])
  np.testing.assert_array_equal(state.batch_stats['bn1_2']['mean'], 0)  # Not copied: fresh.


def test_restoring_another_model_is_refused_and_nothing_is_overwritten(tiny_run, tmp_path):
  workdir = copy_run(tiny_run, tmp_path)
  before = sorted(os.listdir(workdir / 'checkpoints'))
  config_before = open(workdir / 'config.json').read()
  for overrides, message in (({'model.variant': 'B'}, "variant: checkpoint 'A' vs config 'B'"),
                             ({'model.num_classes': 7}, 'num_classes: checkpoint 10 vs config 7')):
    with pytest.raises(ValueError, match=message):
      train.train_and_evaluate(run_helpers.tiny_config(num_train_steps=12, **overrides),
                               str(workdir))
  assert sorted(os.listdir(workdir / 'checkpoints')) == before
  assert open(workdir / 'config.json').read() == config_before


def test_batch_not_divisible_by_devices(tmp_path):
  with pytest.raises(ValueError, match='global_batch_size=12 is not divisible by the 8 devices'):
    train.train_and_evaluate(run_helpers.tiny_config(global_batch_size=12), str(tmp_path))
  with pytest.raises(ValueError, match='x 3 accumulation steps'):
    train.train_and_evaluate(run_helpers.tiny_config(grad_accum_steps=3), str(tmp_path))


@pytest.mark.slow
def test_misspelt_config_override_fails(tmp_path):
  result = subprocess.run(run_helpers.launch_args(tmp_path, learning_rat=0.1), capture_output=True,
                          text=True, timeout=120)
  assert result.returncode != 0
  assert 'learning_rat' in result.stderr
  assert not os.path.exists(tmp_path / 'checkpoints')


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted_bitwise(tmp_path):
  overrides = dict(num_train_steps=120, checkpoint_every_steps=5, eval_every_steps=1000,
                   log_every_steps=10)
  killed = tmp_path / 'killed'
  process = subprocess.Popen(run_helpers.launch_args(killed, **overrides),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    assert run_helpers.wait_for(lambda: any(s >= 15 for s in run_helpers.finished_steps(killed)))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
  finally:
    process.kill()
  assert run_helpers.finished_steps(killed)[-1] < 120  # Killed mid-run.
  resumed = train.train_and_evaluate(run_helpers.tiny_config(**overrides), str(killed))
  assert resumed['step'] == 120
  uninterrupted = tmp_path / 'uninterrupted'
  train.train_and_evaluate(run_helpers.tiny_config(**overrides), str(uninterrupted))
  run_helpers.assert_trees_equal(run_helpers.final_params(str(killed)),
                                 run_helpers.final_params(str(uninterrupted)))


@pytest.mark.slow
def test_sigterm_saves_the_current_step(tmp_path):
  overrides = dict(num_train_steps=100_000, checkpoint_every_steps=50, eval_every_steps=10**6,
                   log_every_steps=10)
  process = subprocess.Popen(run_helpers.launch_args(tmp_path, **overrides), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  try:
    assert run_helpers.wait_for(lambda: run_helpers.finished_steps(tmp_path))
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
  finally:
    process.kill()
  assert process.returncode == 143, output[-2000:]
  saved = int(output.split('Preempted: saved step ')[1].split()[0])
  assert saved in run_helpers.finished_steps(tmp_path) and saved < 100_000
  params, meta = run_helpers.params_and_meta(tmp_path)
  assert meta['step'] == saved


@pytest.mark.slow
def test_two_processes_equal_one_process_with_eight_devices(tmp_path):
  overrides = dict(num_train_steps=6, checkpoint_every_steps=6, eval_every_steps=6)
  procs = run_helpers.start_two_processes(tmp_path / 'two', overrides)
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], ''.join(map(run_helpers.failure_text, outputs))
  assert '8 devices, 2 processes' in outputs[0]
  one = tmp_path / 'one'
  result = train.train_and_evaluate(run_helpers.tiny_config(**overrides), str(one))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         run_helpers.final_params(str(tmp_path / 'two')),
                         run_helpers.final_params(str(one)))
  two_eval = [json.loads(l) for l in open(tmp_path / 'two' / 'metrics.jsonl')][-1]
  assert two_eval['eval/num_examples'] == result['eval/num_examples'] == 450
  # The last evaluation's report merges both processes' shards: every test image counted.
  for run, metrics in ((tmp_path / 'two', two_eval), (one, result)):
    rows = list(csv.DictReader(open(run / 'eval_final_classes.csv')))
    assert sum(int(r['support']) for r in rows) == 450
    wrong = sum(round(float(r['top1_error']) * int(r['support'])) for r in rows)
    assert wrong == round(metrics['eval/top1_error'] * 450)
    assert (run / 'eval_final_errors.png').exists()


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_saves_the_same_step_on_both(tmp_path):
  """JAX's preemption sync point: no per-step round trip, one agreed step, both stop."""
  overrides = dict(num_train_steps=100_000, checkpoint_every_steps=50, eval_every_steps=10**6,
                   log_every_steps=10)
  procs = run_helpers.start_two_processes(tmp_path, overrides)
  try:
    assert run_helpers.wait_for(lambda: run_helpers.finished_steps(tmp_path))
    time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)  # The notice reaches process 0 through JAX.
    outputs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [143, 143], outputs[0][-2000:] + outputs[1][-2000:]
  saved = [int(out.split('Preempted: saved step ')[1].split()[0]) for out in outputs]
  assert saved[0] == saved[1] and saved[0] in run_helpers.finished_steps(tmp_path)
  _, meta = run_helpers.params_and_meta(tmp_path)
  assert meta['step'] == saved[0] < 100_000


def test_a_frozen_batch_norm_base_keeps_its_statistics(tmp_path, bn_net_a):
  """Frozen BatchNorm layers keep scale and statistics; the unfrozen last stage's move."""
  convs = tuple(n for n in models.layer_names('A') if n.startswith('conv'))
  config = run_helpers.tiny_config(**{'model.batch_norm': True, 'optimizer.freeze_conv_base': True,
                                      'optimizer.unfreeze_last_stage': True},
                                   num_train_steps=4, init_from=str(bn_net_a), init_layers=convs)
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  before, _ = checkpointing.load_variables(str(bn_net_a))
  after, _ = checkpointing.load_variables(str(tmp_path / 'run'))
  for layer in after['batch_stats']:
    stats_kept = np.array_equal(after['batch_stats'][layer]['mean'],
                                before['batch_stats'][layer]['mean'])
    scale_kept = np.array_equal(after['params'][layer]['scale'], before['params'][layer]['scale'])
    assert stats_kept == scale_kept == (not layer.startswith('bn5_')), layer


def test_profile_steps_write_a_trace_and_change_no_number(tiny_run, tmp_path):
  plain = tiny_run[0]
  profiled = tmp_path / 'profiled'
  train.train_and_evaluate(run_helpers.tiny_config(profile_steps=(3, 2)), str(profiled))
  traces = glob.glob(str(profiled / 'profile' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
  perfetto = glob.glob(str(profiled / 'profile' / 'plugins' / 'profile' / '*' / '*.trace.json.gz'))
  assert len(traces) == 1 and len(perfetto) == 1
  with gzip.open(perfetto[0]) as f:
    assert json.load(f)['traceEvents']  # Events recorded, not an empty shell.
  assert not os.path.exists(plain / 'profile')
  run_helpers.assert_trees_equal(run_helpers.final_params(str(plain)),
                                 run_helpers.final_params(str(profiled)))
  rows = [json.loads(line) for line in open(plain / 'metrics.jsonl')]
  profiled_rows = [json.loads(line) for line in open(profiled / 'metrics.jsonl')]
  assert [r.get('train/loss') for r in rows] == [r.get('train/loss') for r in profiled_rows]
