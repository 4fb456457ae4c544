"""kmscale.conditioning"""
