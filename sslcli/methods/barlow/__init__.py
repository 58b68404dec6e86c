"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction.

Zbontar et al. 2021, https://arxiv.org/abs/2103.03230

config.py: its settings (torch-free); model.py: the method (torch).
"""
