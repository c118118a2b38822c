"""headserve: calibrated classifier heads on frozen CLIP and DINOv3 encoders, served by Triton.

This package root stays free of heavy imports: ``headserve.client`` must load without torch,
so only the torch-free core (errors, encoder registry, preprocessing, artifacts) lives at this level
next to the torch modules that train and export import explicitly.
"""

__version__ = "0.1.0"
