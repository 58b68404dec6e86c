"""Distillation of a frozen pretrained teacher's embeddings into a student of another architecture.

Chen et al. 2020 (SimCLR v2), "Big Self-Supervised Models are Strong Semi-Supervised Learners",
https://arxiv.org/abs/2006.10029: a big pretrained network distilled into a smaller one on unlabeled images.
Here, as in LightlyTrain's default method, the student regresses the teacher's normalised embeddings of
the same augmented view (Beyer et al. 2022, arXiv 2106.05237: the same view for both, a patient schedule).

config.py: its settings (torch-free); model.py: the method (torch).
"""
