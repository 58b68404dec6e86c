"""RotNet: Unsupervised Representation Learning by Predicting Image Rotations.

Gidaris, Singh, Komodakis 2018, https://arxiv.org/abs/1803.07728 (reference code: gidariss/FeatureLearningRotNet)

config.py: its settings (torch-free); model.py: the method (torch).
"""
