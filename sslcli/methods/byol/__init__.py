"""BYOL: Bootstrap Your Own Latent.

Grill et al. 2020, https://arxiv.org/abs/2006.07733

config.py: its settings (torch-free); model.py: the method (torch).
"""
