"""Colorization: Colorful Image Colorization.

Zhang, Isola & Efros 2016, https://arxiv.org/abs/1603.08511

config.py: its settings (torch-free); model.py: the method (torch).
"""
