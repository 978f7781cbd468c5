"""ctr: large-batch CTR training on TorchRec with CowClip."""
__version__ = "0.1.0"
