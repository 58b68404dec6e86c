"""Jigsaw: Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles.

Noroozi & Favaro 2016, https://arxiv.org/abs/1603.09246

config.py: its settings (torch-free); model.py: the method (torch).
"""
