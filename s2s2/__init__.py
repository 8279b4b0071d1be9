"""s2s2: Semantic Stacking for Semantic Segmentation (Pan et al., AAAI 2025) as a pipeline."""

__version__ = "0.1.0"
