"""CMC: Contrastive Multiview Coding.

Tian, Krishnan & Isola 2019, https://arxiv.org/abs/1906.05849 (reference: HobbitLong/CMC)

config.py: its settings (torch-free); model.py: the method (torch).
"""
