"""Shuffle and Learn: Unsupervised Learning using Temporal Order Verification.

Misra, Zitnick, Hebert 2016, https://arxiv.org/abs/1603.08561

config.py: its settings (torch-free); model.py: the method (torch). Frame tuples: methods/temporal.py.
"""
