"""SimSiam: Exploring Simple Siamese Representation Learning.

Chen, He 2021, https://arxiv.org/abs/2011.10566

config.py: its settings (torch-free); model.py: the method (torch).
"""
