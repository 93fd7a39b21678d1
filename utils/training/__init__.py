"""Training: the state a setup builds, the shared loop, its logging, optimizers, CUDA graph and
command line."""
