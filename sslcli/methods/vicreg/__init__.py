"""VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning.

Bardes, Ponce, LeCun 2022, https://arxiv.org/abs/2105.04906

config.py: its settings (torch-free); model.py: the method (torch).
"""
