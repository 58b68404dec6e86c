"""CPC v2: Data-Efficient Image Recognition with Contrastive Predictive Coding.

Hénaff et al. 2019, https://arxiv.org/abs/1905.09272 (CPC v1: van den Oord et al. 2018, arXiv 1807.03748)

config.py: its settings (torch-free); model.py: the method (torch).
"""
