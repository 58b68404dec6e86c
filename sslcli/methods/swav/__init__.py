"""SwAV: Unsupervised Learning of Visual Features by Contrasting Cluster Assignments.

Caron et al. 2020, https://arxiv.org/abs/2006.09882

config.py: its settings (torch-free); model.py: the method (torch).
"""
