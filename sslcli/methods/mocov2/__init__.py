"""MoCo v2: Improved Baselines with Momentum Contrastive Learning.

Chen, Fan, Girshick, He 2020, https://arxiv.org/abs/2003.04297 (MoCo v1: https://arxiv.org/abs/1911.05722)

config.py: its settings (torch-free); model.py: the method (torch).
"""
