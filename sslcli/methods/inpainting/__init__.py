"""Inpainting: Context Encoders: Feature Learning by Inpainting.

Pathak et al. 2016, https://arxiv.org/abs/1604.07379

config.py: its settings (torch-free); model.py: the method (torch).
"""
