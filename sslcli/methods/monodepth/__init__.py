"""Monodepth: self-supervised monocular depth and ego-motion from video, with Monodepth2's refinements.

Godard, Mac Aodha, Brostow 2017, https://arxiv.org/abs/1609.03677 (Monodepth);
Godard, Mac Aodha, Firman, Brostow 2019, https://arxiv.org/abs/1806.01260 (Monodepth2).

config.py: its settings (torch-free); geometry.py: the view synthesis and its losses (Monodepth2's layers.py);
networks.py: the depth decoder and the pose network; model.py: the method; depth_maps.py: the saved depth
network predicting disparities for the report (depth.png).
"""
