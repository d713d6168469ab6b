"""Training engine: the pretraining loop, optimizer and schedule, checkpoints, metrics, distributed set-up."""
