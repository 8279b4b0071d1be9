"""Datasets: one 2-D sample interface behind adapters (folder, nnunet, npz, icbm152, spm152, and the
paper's releases: synapse, acdc, slaug)."""
