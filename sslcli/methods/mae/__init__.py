"""MAE: Masked Autoencoders Are Scalable Vision Learners.

He et al. 2021, https://arxiv.org/abs/2111.06377

config.py: its settings (torch-free); model.py: the method (torch).
"""
