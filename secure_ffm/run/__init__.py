"""Running: the in-process runner, the run directory's writer and checkpoints, and the command line."""
