"""LocalAgg: Local Aggregation for Unsupervised Learning of Visual Embeddings.

Zhuang, Zhai & Yamins, ICCV 2019, https://arxiv.org/abs/1903.12355 (reference code: neuroailab/LocalAggregation)

config.py: its settings (torch-free); model.py: the method (torch).
"""
