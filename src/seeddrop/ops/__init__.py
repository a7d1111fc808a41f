"""One module per op family: kernels, launcher, PyTorch reference, autograd Function."""
