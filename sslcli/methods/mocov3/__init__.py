"""MoCo v3: An Empirical Study of Training Self-Supervised Vision Transformers.

Chen, Xie, He 2021, https://arxiv.org/abs/2104.02057

config.py: its settings (torch-free); model.py: the method (torch).
"""
