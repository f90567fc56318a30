"""Base config: the paper's recipe (Sec. 3.1) on ImageNet-sized inputs.

Every experiment config imports this and changes only what differs.
"""

import ml_collections


def get_config():
  """Defaults shared by all experiments."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # The one seed; every other key comes from fold_in/split.

  config.model = ml_collections.ConfigDict()
  config.model.variant = 'D'  # Table 1: A, A-LRN, B, C, D, E.
  config.model.num_classes = 1000
  config.model.width = 1.0  # Multiplier of the 64..512 conv channels.
  config.model.fc_width = 4096  # fc6, fc7.
  config.model.dropout_rate = 0.5  # Sec. 3.1, after fc6 and fc7.
  config.model.dtype = 'float32'  # Computation dtype ('bfloat16' on accelerators).
  config.model.kernel_init = 'glorot'  # Or 'paper': N(0, 0.01^2), Sec. 3.1.
  config.model.image_size = 224  # Training crop, pixels.
  config.model.head = 'fc'  # 'fc': fc6-fc8; 'small': Dense head_width, ReLU, dropout, Dense.
  config.model.head_width = 256

  config.data = ml_collections.ConfigDict()
  config.data.source = 'tfds'  # 'tfds', 'folder' or 'digits'.
  config.data.name = 'imagenet2012'  # TFDS name.
  config.data.folder = ''  # Image folder root for source='folder'.
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir.
  config.data.manual_dir = ml_collections.config_dict.placeholder(str)  # ImageNet tars.
  config.data.download = False  # Let TFDS download (never for imagenet2012).
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.scale_min = 256  # Training scale S, pixels (Sec. 3.1); = scale_max: fixed.
  config.data.scale_max = 256  # 512 for scale jittering S ~ U[256, 512].
  config.data.eval_scale = 256  # Test scale Q, pixels (Sec. 3.2).
  config.data.random_flip = True  # Horizontal flip, Sec. 3.1.
  config.data.pca_stddev = 0.1  # AlexNet colour shift, alpha ~ N(0, 0.1); 0 disables.
  config.data.pca_eigval = ml_collections.config_dict.placeholder(object)  # None: ImageNet's.
  config.data.pca_eigvec = ml_collections.config_dict.placeholder(object)
  config.data.mean_rgb = ml_collections.config_dict.placeholder(object)  # None: computed.
  config.data.stats_max_examples = 10_000  # Images read to compute the mean RGB.
  config.data.shuffle_buffer = 10_000  # Examples.

  config.global_batch_size = 256  # Sec. 3.1, over all devices of all processes.
  config.grad_accum_steps = 1  # Micro-batches per step (to fit 256 on small devices).
  config.eval_batch_size = 256  # Global.
  config.num_epochs = 74.0  # Sec. 3.1: 370K iterations at batch 256.
  config.num_train_steps = -1  # > 0 overrides num_epochs.

  config.learning_rate = 1e-2  # Sec. 3.1.
  config.momentum = 0.9  # Sec. 3.1.
  config.weight_decay = 5e-4  # L2, coupled into the gradient (add_decayed_weights).
  config.decay_biases = False  # Weight decay on weights only by default.
  config.schedule = 'plateau'  # 'plateau' (the paper's), 'step' or 'cosine'.
  config.plateau_factor = 0.1  # Sec. 3.1: lr divided by 10 ...
  config.plateau_patience = 2  # ... after this many evals without improvement ...
  config.plateau_max_decays = 3  # ... at most 3 times.
  config.plateau_min_delta = 0.0  # Top-1 error improvement that counts.
  config.step_decay_epochs = (30.0, 50.0, 65.0)  # 'step': lr x 0.1 at these epochs.

  config.init_from = ''  # Workdir of a finished net-A run (Sec. 3.1 warm start).
  config.init_layers = ('conv1_1', 'conv2_1', 'conv3_1', 'conv3_2', 'fc6', 'fc7', 'fc8')
  config.freeze_conv_base = False  # Transfer learning: no updates, no decay on conv layers.
  config.unfreeze_last_stage = False  # With freeze_conv_base: conv5_* still train.

  config.eval = ml_collections.ConfigDict()  # launch.py --mode=evaluate (Sec. 3.2).
  config.eval.protocol = 'single'  # 'single', 'dense', 'multicrop', 'dense+multicrop'.
  config.eval.scales = ()  # Test scales Q, pixels; several: multi-scale. Empty: data.eval_scale.
  config.eval.flip = True  # Average with horizontal flips (Sec. 3.2); off for digits.
  config.eval.checkpoint = 'best'  # 'best' (eval top-1 error), 'latest' or a step number.
  config.eval.fusion_workdirs = ()  # Further runs whose posteriors are averaged with this one.
  config.eval.batch_size = 64  # Views per device call, over the local devices.
  config.eval.split = ''  # Empty: data.eval_split.
  config.eval.max_examples = 0  # > 0: only the first images of the split.

  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3  # The latest k, plus the best by eval top-1 error.
  return config
