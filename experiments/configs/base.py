"""Base config: the paper's recipe (Sec. 3.1) on ImageNet-sized inputs.

Every experiment config imports this and changes only what differs. Each section is
built by one small function (model_config, data_config, optimizer_config, eval_config)
that tests, the ablation and the benchmarks reuse instead of retyping ConfigDicts.
The library reads every field (no defaults restated there) and checks the values once
at start-up (vgg_jax.training.config_checks), naming the field that is wrong.
"""

import ml_collections

placeholder = ml_collections.config_dict.placeholder


def model_config() -> ml_collections.ConfigDict:
  """config.model: models.VGG's fields (Table 1), dtype given by name."""
  model = ml_collections.ConfigDict()
  model.variant = 'D'  # Table 1: A, A-LRN, B, C, D, E.
  model.num_classes = 1000  # 0: as many as the data has (image folders).
  model.width = 1.0  # Multiplier of the 64..512 conv channels.
  model.fc_width = 4096  # fc6, fc7.
  model.dropout_rate = 0.5  # Sec. 3.1, after fc6 and fc7.
  model.dtype = 'float32'  # Computation dtype ('bfloat16' on accelerators).
  model.kernel_init = 'glorot'  # Or 'paper': N(0, 0.01^2), Sec. 3.1.
  model.image_size = 224  # Training crop, pixels.
  model.head = 'fc'  # 'fc': fc6-fc8; 'small': Dense head_width, ReLU, dropout, Dense.
  model.head_width = 256
  model.conv_impl = 'auto'  # 'auto': matmul convs on the CPU, XLA's elsewhere; 'xla', 'matmul'.
  model.pool_impl = 'auto'  # 'auto': as conv_impl; 'xla' (reduce_window), 'reshape'.
  model.batch_norm = False  # True: BatchNorm after every conv (torchvision's vgg*_bn).
  return model


def data_config() -> ml_collections.ConfigDict:
  """config.data: the source and the paper's augmentation (Sec. 3.1, 3.2)."""
  data = ml_collections.ConfigDict()
  data.source = 'tfds'  # 'tfds', 'folder', 'digits' or 'fake'.
  data.name = 'imagenet2012'  # TFDS name.
  data.folder = ''  # Image folder root for source='folder'.
  data.skip_corrupt = False  # Folders: leave undecodable images out (warning), not stop.
  data.data_dir = placeholder(str)  # TFDS data_dir.
  data.manual_dir = placeholder(str)  # ImageNet tars.
  data.download = False  # Let TFDS download (never for imagenet2012).
  data.train_split = 'train'
  data.eval_split = 'validation'
  data.scale_min = 256  # Training scale S, pixels (Sec. 3.1); = scale_max: fixed.
  data.scale_max = 256  # 512 for scale jittering S ~ U[256, 512].
  data.eval_scale = 256  # Test scale Q, pixels (Sec. 3.2).
  data.random_flip = True  # Horizontal flip, Sec. 3.1.
  data.pca_stddev = 0.1  # AlexNet colour shift, alpha ~ N(0, 0.1); 0 disables.
  # > 0: the host only decodes each crop's uint8 window (padded to this side, pixels) and
  # the train step resamples it on the device (vgg_jax/data/device_crops.py); 0: all on the host.
  data.device_window = 0
  data.pca_eigval = placeholder(object)  # None: ImageNet's; 'compute': from the data.
  data.pca_eigvec = placeholder(object)
  data.mean_rgb = placeholder(object)  # None: computed from the training set and cached.
  data.stats_max_examples = 10_000  # Images read to compute the mean RGB.
  data.shuffle_buffer = 10_000  # Examples (TFDS sources).
  data.fake_num_examples = 50_000  # source='fake': training images generated.
  data.fake_image_shape = (256, 341)  # source='fake': height, width, pixels.
  data.fake_num_classes = 1000  # source='fake'.
  return data


def optimizer_config() -> ml_collections.ConfigDict:
  """config.optimizer: SGD, Sec. 3.1 (the library reads it as optim.OptimizerConfig)."""
  optim = ml_collections.ConfigDict()
  optim.learning_rate = 1e-2  # Sec. 3.1.
  optim.momentum = 0.9  # Sec. 3.1.
  optim.weight_decay = 5e-4  # L2, coupled into the gradient (add_decayed_weights).
  optim.decay_biases = False  # Weight decay on weights only by default.
  optim.schedule = 'plateau'  # 'plateau' (the paper's), 'step' or 'cosine'.
  optim.plateau_factor = 0.1  # Sec. 3.1: lr divided by 10 ...
  optim.plateau_patience = 2  # ... after this many evals without improvement ...
  optim.plateau_max_decays = 3  # ... at most 3 times.
  optim.plateau_min_delta = 0.0  # Top-1 error improvement that counts.
  optim.step_decay_epochs = (30.0, 50.0, 65.0)  # 'step': lr x 0.1 at these epochs.
  optim.freeze_conv_base = False  # Transfer learning: no updates, no decay on conv layers.
  optim.unfreeze_last_stage = False  # With freeze_conv_base: conv5_* still train.
  return optim


def eval_config() -> ml_collections.ConfigDict:
  """config.eval: launch.py --mode=evaluate|predict (Sec. 3.2)."""
  evaluation = ml_collections.ConfigDict()
  evaluation.protocol = 'single'  # 'single', 'dense', 'multicrop', 'dense+multicrop'.
  evaluation.scales = ()  # Test scales Q, pixels; several: multi-scale. Empty: data.eval_scale.
  evaluation.flip = True  # Average with horizontal flips (Sec. 3.2); off for digits.
  evaluation.checkpoint = 'best'  # 'best' (eval top-1 error), 'latest' or a step number.
  evaluation.fusion_workdirs = ()  # Further runs whose posteriors are averaged with this one.
  evaluation.batch_size = 64  # Views per device call, over the local devices.
  evaluation.split = ''  # Empty: data.eval_split.
  evaluation.max_examples = 0  # > 0: only the first images of the split.
  # Beside eval_<protocol>.json: confusion matrix, per-class table, most confident errors.
  evaluation.report = True
  return evaluation


def get_config():
  """Defaults shared by all experiments."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # The one seed; every other key comes from fold_in/split.
  config.model = model_config()
  config.data = data_config()
  config.optimizer = optimizer_config()
  config.eval = eval_config()

  config.global_batch_size = 256  # Sec. 3.1, over all devices of all processes.
  config.grad_accum_steps = 1  # Micro-batches per step (to fit 256 on small devices).
  config.eval_batch_size = 256  # Global.
  config.num_epochs = 74.0  # Sec. 3.1: 370K iterations at batch 256.
  config.num_train_steps = -1  # > 0 overrides num_epochs.

  config.init_from = ''  # Workdir of a finished net-A run (Sec. 3.1 warm start).
  config.init_layers = ('conv1_1', 'conv2_1', 'conv3_1', 'conv3_2', 'fc6', 'fc7', 'fc8')

  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3  # The latest k, plus the best by eval top-1 error.
  # Multi-process runs: a process silent this long (seconds) is lost, and the others stop
  # with one error line (exit status 75); JAX's own heartbeat gets three times as long.
  config.peer_timeout_seconds = 10
  config.shutdown_timeout_seconds = 30  # How long processes wait for each other at exit.
  # (first step, count): a JAX profiler trace of those training steps in workdir/profile
  # (TensorBoard's profile plugin, or Perfetto); () is off. docs/performance.md.
  config.profile_steps = ()
  return config
