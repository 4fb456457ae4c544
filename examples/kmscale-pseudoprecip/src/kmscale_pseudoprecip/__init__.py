"""Example kmscale plugin: a pseudo-precipitation encoder living outside kmscale."""

from kmscale_pseudoprecip.encoder import ConvPseudoPrecip

__all__ = ["ConvPseudoPrecip"]
