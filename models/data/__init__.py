"""The data stage: IDX files (`idx`), dataset lookup, verified downloads and the bundled MNIST sample
(`datasets`, `sample/`). Returns a frozen `Dataset` of uint8 images and int labels.

May import layout.core only, as all of models."""
