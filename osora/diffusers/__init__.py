"""osora's models in diffusers' format: `OsoraPipeline` and its components.

`osora weights export diffusers CKPT DIR` (osora.weights.diffusers_export) writes a folder
`OsoraPipeline.from_pretrained(DIR)` loads; docs/diffusers.md says what is in it. This package
imports diffusers (the pipeline extra); nothing else in osora imports it.
"""

from osora.diffusers.autoencoders import HunyuanVideoVAEView, OsoraDCAE
from osora.diffusers.pipeline import OsoraPipeline, OsoraPipelineOutput
from osora.diffusers.scheduler import osora_scheduler
from osora.diffusers.transformer import OsoraTransformer

__all__ = ["HunyuanVideoVAEView", "OsoraDCAE", "OsoraPipeline", "OsoraPipelineOutput",
           "OsoraTransformer", "osora_scheduler"]
