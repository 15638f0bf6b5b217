"""The VL-JEPA model in PyTorch + transformers. No Ray imports here: parallelism and placement
are applied from outside (see pipelines/)."""
