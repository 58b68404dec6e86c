"""DINO: Emerging Properties in Self-Supervised Vision Transformers.

Caron et al. 2021, https://arxiv.org/abs/2104.14294

config.py: its settings (torch-free); model.py: the method (torch).
"""
