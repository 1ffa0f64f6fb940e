"""The parts every training task shares, each in its own module, in the order a run uses them:

``runtime``      where this process runs (device, rank, world size under torchrun)
``run``          a run's frame: the runtime and the locked run folder, released however the run ends
``optim``        AdamW parameter groups (weight decay, layer-wise lr decay) and the warm-up + cosine schedule
``checkpoints``  the run folder: its lock, resumable checkpoints (last, best, EMA, periodic) and resume rules
``state``        everything a checkpoint must hold to resume a run bit for bit
``loop``         one epoch of training
``validate``     one pass over the validation set (model and EMA)
``records``      what the run leaves to read: metrics.jsonl, summary.json, TensorBoard, curves.png

``convnext.tasks.classification.train.train`` puts them together for image classification.
"""
