"""CPC v2: Data-Efficient Image Recognition with Contrastive Predictive Coding.

Hénaff et al. 2019, https://arxiv.org/abs/1905.09272 (CPC v1: van den Oord et al. 2018, arXiv 1807.03748)

Each view is cut into a grid of half-overlapping patches; every patch, augmented on its own, goes through
the shared encoder, whose pooled features z_{i,j} form a grid. A masked (PixelCNN-style) context network
reads the grid top to bottom: its output c_{i,j} depends only on the rows 0..i. For each offset k a linear
map predicts the patch k rows below, W_k c_{i,j} ~ z_{i+k,j}, scored by InfoNCE against every patch of the
batch (all positions of all images; under torchrun the global batch's, gathered with their gradients).

The exported encoder is the patch encoder. probe, finetune, export and embed use it as every other encoder:
on the whole image, its pooled features (the paper instead mean-pools the grid of patch features); the
encoder's metadata says it was trained on patches (`trained_input`).

Every random draw (the per-patch augmentation) is made with torch's global RNG on the batch's device inside
forward, as the pretext tasks do, so a resumed run draws the same.

config.py: its settings (torch-free); model.py: the method (torch).
"""
