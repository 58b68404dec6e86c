"""Exemplar (S4L-Exemplar): every image its own class, its augmented copies pulled together by a triplet loss.

Zhai, Oliver, Kolesnikov & Beyer 2019, S4L: Self-Supervised Semi-Supervised Learning, ICCV 2019,
https://arxiv.org/abs/1905.03670 (after Kolesnikov, Zhai & Beyer 2019, Revisiting Self-Supervised Visual
Representation Learning, https://arxiv.org/abs/1901.09005; reference code: google/revisiting-self-supervised
self_supervision/exemplar.py; the task is Dosovitskiy et al. 2014's Exemplar CNN).

config.py: its settings (torch-free); model.py: the method (torch).
"""
