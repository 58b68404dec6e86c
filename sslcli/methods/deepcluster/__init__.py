"""DeepCluster v2: k-means of a memory of projections every epoch, prototypes set to the centroids.

Caron et al. 2020, https://arxiv.org/abs/2006.09882 (appendix; reference code facebookresearch/swav
main_deepclusterv2.py). DeepCluster (Caron et al. 2018) with SwAV's training pieces: multi-crop, an MLP
projection head, L2-normalised projections, and a cross entropy against fixed prototypes at temperature 0.1.

config.py: its settings (torch-free); model.py: the method (torch).
"""
