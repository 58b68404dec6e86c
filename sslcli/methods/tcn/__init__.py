"""Time-Contrastive Networks: Self-Supervised Learning from Video.

Sermanet, Lynch, Chebotar, Hsu, Jang, Schaal, Levine 2018, https://arxiv.org/abs/1704.06888

config.py: its settings (torch-free); model.py: the method (torch). Frame tuples: methods/temporal.py.
"""
