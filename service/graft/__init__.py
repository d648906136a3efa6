"""Graft: adapt pretrained image CNNs to your own labelled images, over gRPC."""

__version__ = "0.1.0"
