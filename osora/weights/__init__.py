"""Weight importers and exporters; exported weights are safetensors.

Every load goes through safetensors or `torch.load(weights_only=True)`, never a full unpickle.
"""

from osora.weights.safetensors_io import load_weights, read_metadata, save_weights

__all__ = ["load_weights", "read_metadata", "save_weights"]
