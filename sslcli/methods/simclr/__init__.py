"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations.

Chen et al. 2020, https://arxiv.org/abs/2002.05709

config.py: its settings (torch-free); model.py: the method (torch).
"""
