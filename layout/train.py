"""`python -m layout.train CONFIG`: the training stage alone; writes config.yaml, network.npz and
metrics.json (the network then serves `python -m layout.run CONFIG` from the cache, or --network)."""

from layout.run import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
