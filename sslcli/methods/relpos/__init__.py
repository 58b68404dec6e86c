"""Relative position: Unsupervised Visual Representation Learning by Context Prediction.

Doersch, Gupta, Efros 2015, https://arxiv.org/abs/1505.05192

config.py: its settings (torch-free); model.py: the method (torch).
"""
