"""osora: the Open-Sora 2.0 recipe as a declarative experiment platform.

Importing osora has no side effects; heavy dependencies (Lance, MLflow, DVC, PyAV) are imported
by the modules that use them.
"""

__version__ = "0.1.0"
