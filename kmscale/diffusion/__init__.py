"""kmscale.diffusion"""
