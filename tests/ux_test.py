"""What a person sees: user errors as one line naming the fix, no start-up noise, the
summary and the closing sentence in percent (vgg_jax.cli, vgg_jax.training.console)."""

import logging as std_logging
import os
import subprocess
import sys

import pytest

import data_helpers
from vgg_jax import cli
from vgg_jax import errors
from vgg_jax import models
from vgg_jax import stderr
from vgg_jax.training import console
from vgg_jax.training import train
from vgg_jax.training import warm_start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Start-up notices that must not show (TensorFlow's C++ libraries, JAX's backend search).
NOISE = ('absl::InitializeLog()', 'oneDNN custom operations', "Unable to initialize backend")
# A tiny folder run: the README's laptop example at test size.
TINY = ['--config.model.width=0.125', '--config.model.fc_width=32',
        '--config.model.image_size=32', '--config.data.scale_min=32',
        '--config.data.scale_max=36', '--config.data.eval_scale=32',
        '--config.data.device_window=0', '--config.global_batch_size=8',
        '--config.eval_batch_size=8', '--config.num_train_steps=2',
        '--config.log_every_steps=1', '--config.eval_every_steps=2',
        '--config.checkpoint_every_steps=2']


def run(args, tmp_path, **env):
  """A command of this checkout (not the installed vgg_jax), offline, caches in tmp_path."""
  # One device, as on a laptop, and the suite's quick compilation (data_helpers).
  env = dict(os.environ, XLA_FLAGS=data_helpers.FAST_COMPILE_FLAGS, PYTHONPATH=ROOT,
             VGG_JAX_CACHE=str(tmp_path / 'cache'), **env)
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                        cwd=tmp_path, timeout=900, check=False)


def test_subprocesses_run_this_checkout(tmp_path):
  result = run(['-c', 'import vgg_jax; print(vgg_jax.__file__)'], tmp_path)
  assert result.stdout.startswith(os.path.join(ROOT, 'vgg_jax')), result.stdout


def test_user_error_is_one_line_and_other_errors_keep_their_traceback(tmp_path):
  """A chained UserError prints its message alone, after a TensorFlow import that prints
  none of its start-up notices; any other exception keeps its traceback."""
  code = ('import sys, urllib.error\n'
          'from vgg_jax import cli, errors\n'
          'def main(argv):\n'
          '  try:\n'
          '    raise urllib.error.URLError("no network")\n'
          '  except OSError:\n'
          '    if argv[1:] == ["other"]: raise KeyError("a bug")\n'
          '    cli.import_tensorflow()\n'
          '    raise errors.NotFound("No weights: set VGG_JAX_MIRROR.")\n'
          'cli.run(main)\n')
  (tmp_path / 'command.py').write_text(code)
  user = run(['command.py'], tmp_path)
  assert (user.returncode, user.stdout) == (1, '')
  assert user.stderr == 'error: No weights: set VGG_JAX_MIRROR.\n', user.stderr
  other = run(['command.py', 'other'], tmp_path)
  assert other.returncode == 1 and 'Traceback' in other.stderr and 'KeyError' in other.stderr
  assert "'a bug'" in other.stderr.splitlines()[-1]


def test_user_errors_keep_their_builtin_bases():
  assert issubclass(errors.InvalidInput, ValueError)
  assert issubclass(errors.NotFound, FileNotFoundError)
  from vgg_jax.pretrained import download  # pylint: disable=g-import-not-at-top
  assert issubclass(download.DownloadError, errors.UserError)
  assert issubclass(download.DownloadError, ValueError)


def test_errors_print_in_percent_and_top5_only_above_5_classes():
  metrics = {'eval/top1_error': 0.006666666666666667, 'eval/top5_error': 0.0,
             'eval/num_examples': 450}
  assert console.format_errors(metrics, 10) == 'top-1 error 0.67%, top-5 error 0.00%'
  assert console.format_errors(metrics, 2) == 'top-1 error 0.67%'
  sentence = console.format_result({'step': 630, 'num_classes': 2, **metrics}, '/w', 86.0)
  assert sentence.startswith('Finished at step 630 in 0:01:26: top-1 error 0.67% '
                             '(99.33% accuracy) on 450 images.'), sentence
  assert '/w/checkpoints' in sentence and '/w/metrics.jsonl' in sentence
  assert '/w/eval_final_classes.md' in sentence
  ten = console.format_result({'step': 630, 'num_classes': 10, **metrics}, '/w', 85.0)
  assert ten.startswith('Finished at step 630 in 0:01:25: top-1 error 0.67% (99.33% '
                        'accuracy), top-5 error 0.00%, on 450 images.'), ten


def test_warm_start_of_another_width_names_the_flags():
  model = models.VGG(variant='A', num_classes=2, width=0.25, fc_width=64)
  source = {'width': 0.125, 'fc_width': 32}
  with pytest.raises(errors.InvalidInput) as error:
    warm_start.check_widths('run', source, model, ('conv1_1', 'fc6', 'fc7'))
  message = str(error.value)
  assert '--config.model.width=0.125' in message and '--config.model.fc_width=32' in message
  # Only what is copied must match: the convs alone do not care about fc_width.
  with pytest.raises(errors.InvalidInput, match='width=0.125') as error:
    warm_start.check_widths('run', source, model, ('conv1_1',))
  assert 'fc_width' not in str(error.value)
  warm_start.check_widths('run', source, model, ('fc8',))  # Neither: nothing to refuse.


def test_stderr_filter_drops_only_the_noise_even_when_the_block_ends_at_once(capfd):
  """Short blocks: the copying thread may first run after the block has ended."""
  for i in range(50):
    with stderr.dropping(('noise',)):
      os.write(2, b'noise line\nkept %d\n' % i)
  err = capfd.readouterr().err
  assert 'noise' not in err
  assert err.splitlines() == [f'kept {i}' for i in range(50)]


def test_a_failed_run_removes_only_what_it_created(tmp_path):
  fresh = tmp_path / 'fresh'
  before = train.listing(str(fresh))
  (fresh / 'checkpoints').mkdir(parents=True)
  (fresh / 'config.json').write_text('{}')
  train.remove_created(str(fresh), before)
  assert not fresh.exists()

  kept = tmp_path / 'kept'
  kept.mkdir()
  (kept / 'notes.txt').write_text('mine')
  before = train.listing(str(kept))
  (kept / 'folder_check.json').write_text('{}')
  train.remove_created(str(kept), before)
  assert sorted(os.listdir(kept)) == ['notes.txt']

  stepped = tmp_path / 'stepped'
  before = train.listing(str(stepped))
  (stepped / 'checkpoints' / '4').mkdir(parents=True)  # A saved step: resumable, kept.
  train.remove_created(str(stepped), before)
  assert (stepped / 'checkpoints' / '4').is_dir()

  logged = tmp_path / 'logged'  # Steps logged before any checkpoint: their record is kept.
  before = train.listing(str(logged))
  (logged / 'checkpoints').mkdir(parents=True)
  (logged / 'metrics.jsonl').write_text('{"step": 100, "train/loss": 2.3}\n')
  train.remove_created(str(logged), before)
  assert sorted(os.listdir(logged)) == ['checkpoints', 'metrics.jsonl']


@pytest.mark.slow
def test_offline_journeys_print_one_message_naming_the_fix(tmp_path):
  """Predict with named weights and LPIPS, offline: the message alone, once."""
  predict = run([os.path.join(ROOT, 'launch.py'), '--mode=predict', '--workdir=vgg16',
                 'x.jpg'], tmp_path, VGG_JAX_MIRROR=str(tmp_path / 'nonexistent'))
  assert predict.returncode == 1 and 'Traceback' not in predict.stderr
  assert predict.stderr.startswith('error: VGG_JAX_MIRROR=') and predict.stderr.count('\n') == 1
  assert 'does not exist' in predict.stderr
  (tmp_path / 'mirror').mkdir()
  lpips = run(['-m', 'vgg_jax.lpips', 'a.png', 'b.png'], tmp_path,
              VGG_JAX_MIRROR=str(tmp_path / 'mirror'))
  assert lpips.returncode == 1 and 'Traceback' not in lpips.stderr
  assert lpips.stderr.count('\n') == 1 and '--backbone=PATH' in lpips.stderr
  assert not [line for line in NOISE if line in predict.stderr + lpips.stderr]


def readme_laptop_flags(folder: str) -> list[str]:
  """The --config flags of the README's laptop example, on `folder`."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  block = text[text.index('### On a laptop'):]
  block = block[block.index('```bash'):block.index('```', block.index('```bash') + 3)]
  flags = [word for word in block.split() if word.startswith('--config.')]
  assert '--config.data.folder=/data/pets' in flags and len(flags) > 10, flags
  return [f'--config.data.folder={folder}' if flag.startswith('--config.data.folder=')
          else flag for flag in flags]


@pytest.mark.slow
def test_readme_laptop_examples_summary_end_sentence_and_a_warm_start_that_does_not_fit(
    tmp_path, folder):
  """The README's folder run and fine-tune from it, at tiny size (TINY's later flags win):
  one summary, the percent at the end; a warm start of another width: one line naming
  the flag, and no workdir left behind."""
  configs = os.path.join(ROOT, 'experiments', 'configs')
  flags = readme_laptop_flags(folder) + TINY
  first = run([os.path.join(ROOT, 'launch.py'), '--workdir=pets',
               f"--config={os.path.join(configs, 'image_folder.py')}", *flags], tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  assert first.stderr.count('Run summary:') == 1 and 'VGG-D, width 0.125' in first.stderr
  assert first.stderr.count(f"Folder {os.path.join(folder, 'train')}:") == 1
  assert not [line for line in NOISE if line in first.stderr]
  assert first.stdout.startswith('Finished at step 2 in ') and '% accuracy) on 10 images' in (
      first.stdout)
  assert '"eval/top1_error"' not in first.stdout + first.stderr  # The JSON is in the files.
  finetune = [os.path.join(ROOT, 'launch.py'), f"--config={os.path.join(configs, 'finetune.py')}",
              *flags, f"--config.init_from={tmp_path / 'pets'}"]
  tuned = run([*finetune, '--workdir=tuned'], tmp_path)
  assert tuned.returncode == 0, tuned.stderr[-3000:]
  assert 'Warm start: copied conv1_1' in tuned.stderr and 'Finished at step 2' in tuned.stdout
  corrupt = tmp_path / 'corrupt.jpg'
  corrupt.write_bytes(open(os.path.join(folder, 'train', 'cat', '000.jpg'), 'rb').read()[:300])
  predict = run([os.path.join(ROOT, 'launch.py'), '--mode=predict', '--workdir=./pets',
                 str(corrupt)], tmp_path)
  assert predict.returncode == 1 and predict.stdout == ''
  assert predict.stderr.startswith(f'error: Could not decode image {corrupt}: ')
  assert predict.stderr.endswith('; replace it or leave it out.\n')
  assert predict.stderr.count('\n') == 1, predict.stderr  # No libjpeg or tf.data lines.
  wider = run([*finetune, '--workdir=wider', '--config.model.width=0.25'], tmp_path)
  assert wider.returncode == 1 and 'Traceback' not in wider.stderr
  assert wider.stderr.splitlines()[-1].startswith('error: Warm start:')
  assert '--config.model.width=0.125' in wider.stderr
  assert not (tmp_path / 'wider').exists()


def test_jax_backend_filter_drops_only_its_info_lines():
  def record(path, level):
    return std_logging.LogRecord('jax', level, path, 1, 'backend', None, None)
  bridge = '/site-packages/jax/_src/xla_bridge.py'
  assert not cli.filter_jax_backend_log(record(bridge, std_logging.INFO))
  assert cli.filter_jax_backend_log(record(bridge, std_logging.WARNING))
  assert cli.filter_jax_backend_log(record('/vgg_jax/training/train.py', std_logging.INFO))
