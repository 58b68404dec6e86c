"""DIM: Learning deep representations by mutual information estimation and maximization.

Hjelm, Fedorov, Lavoie-Marchildon, Grewal, Bachman, Trischler & Bengio, ICLR 2019,
https://arxiv.org/abs/1808.06670 (reference code: rdevon/DIM)

config.py: its settings (torch-free); model.py: the method (torch).
"""
