"""Data, network and training: MNIST-format datasets, a JAX MLP, and an optax training loop."""
