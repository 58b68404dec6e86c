"""DINOv2: Learning Robust Visual Features without Supervision.

Oquab et al. 2023, https://arxiv.org/abs/2304.07193 (reference code: facebookresearch/dinov2, ssl_meta_arch.py)

config.py: its settings (torch-free); model.py: the method (torch).
"""
