"""Model definitions, one file per model; they import only torch (and numpy/einops).

Loading weights (safetensors, transformers folders) happens where a model is used, so a GPU
machine with nothing but torch can import these modules from a plain checkout.
"""
