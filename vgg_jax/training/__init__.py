"""Training: the loop and everything it runs at its intervals or on its failures.

  train          train_and_evaluate: config -> mesh -> data -> state -> the step loop
  steps          the jitted, sharded train and eval steps
  optim          SGD with momentum and weight decay, the paper's plateau schedule
  config_checks  every config field checked once at start-up, naming the bad one
  monitoring     metrics.jsonl and TensorBoard, NaN checks, throughput and MFU
  console        what a run prints: the summary at the start, errors in percent, the end
  preemption     SIGTERM -> save after this step, then stop
  peers          a lost or hung peer process -> one line and exit 75
  host_memory    glibc settings that reuse freed host memory (faster CPU steps)
"""
