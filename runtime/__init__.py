"""How a run computes: the device and its arithmetic, the processes of a world, the training
and evaluation loops, the run's setup from its options."""
