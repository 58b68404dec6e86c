"""Unsupervised Learning of Visual Representations using Videos (tracked patches, a ranking loss).

Wang and Gupta 2015, https://arxiv.org/abs/1505.00687

config.py: its settings (torch-free); tracker.py: the motion box and the correlation tracker (torch);
model.py: the method (torch). Frame windows: methods/temporal.py.
"""
