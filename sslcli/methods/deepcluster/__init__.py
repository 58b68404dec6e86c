"""DeepCluster v2: k-means of a memory of projections every epoch, prototypes set to the centroids.

Caron et al. 2020, https://arxiv.org/abs/2006.09882 (appendix; reference code facebookresearch/swav)

config.py: its settings (torch-free); model.py: the method (torch).
"""
