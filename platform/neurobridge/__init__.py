"""NeuroBridge: ingest, pretrain, align and track neural foundation models on Ray."""

__version__ = "0.1.0"
