"""Conditioning: predictors on the latent grid, static fields, embeddings, datasets.

See :mod:`kmscale.conditioning.dataset` for what one training example holds.
"""
