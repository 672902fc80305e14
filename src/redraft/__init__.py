"""redraft: describe, invert and edit images with Stable Diffusion."""

from .describe.model import Description
from .editor import Editor, load
from .errors import InputError
from .inversion import Cost, Inversion

__all__ = ["load", "Editor", "Inversion", "Cost", "InputError", "Description"]
