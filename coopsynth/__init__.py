"""coopsynth: learn a texture or a dynamic texture from one image or video with CoopNets."""

from .errors import CoopsynthError

__version__ = "0.1.0"
__all__ = ["CoopsynthError", "__version__"]
