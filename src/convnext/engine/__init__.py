"""The training engine every task runs through, each part in its own module, in the order a run uses them:

``config``       the settings every run shares, their ranges, one resolver/validator/fitting rule
``task``         what a task supplies: model, data and schedule, a step's losses, validation, its key metric
``fit``          ``fit(task)``: one run, top to bottom (folder, state, resume, periods, summary)
``runtime``      where this process runs (device, rank, world size under torchrun)
``run``          a run's frame: the runtime and the locked run folder, released however the run ends
``optim``        AdamW parameter groups (weight decay, the model's layer-wise lr decay) and its schedule
``checkpoints``  the run folder: its lock, resumable checkpoints (last, best, EMA, periodic) and resume rules
``state``        everything a checkpoint must hold to resume a run bit for bit
``loop``         one period (epoch or interval) of training steps
``records``      what the run leaves to read: metrics.jsonl, summary.json, TensorBoard, curves.png

The tasks (``convnext.tasks``) build on it; it knows none of them.
"""
