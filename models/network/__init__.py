"""The network stage: the `Network` every later stage reads (`network`), the MLP as a pure function
(`mlp`), the network of a model.layers list, convolutions included (`cnn`), training with optax
(`train`), and network.npz files and the cache of trained networks (`store`).

May import models.data and layout.core only."""
