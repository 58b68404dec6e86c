"""InstDisc: Unsupervised Feature Learning via Non-Parametric Instance Discrimination.

Wu, Xiong, Yu & Lin 2018, https://arxiv.org/abs/1805.01978 (reference: zhirongw/lemniscate.pytorch)

config.py: its settings (torch-free); model.py: the method (torch).
"""
