"""Sparse autoencoders: the TopK SAE (`SparseAutoencoder`), its config, loss, kernels and file format."""

from sae.activations import TopKOutput
from sae.config import SAEConfig
from sae.model import ForwardOutput, SparseAutoencoder

__all__ = ["ForwardOutput", "SAEConfig", "SparseAutoencoder", "TopKOutput"]
