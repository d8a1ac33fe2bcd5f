"""Learned models (PyTorch, imported lazily): the Dual U-Net ROI segmenter.

Each model is a folder beside this file (config.json, weights.pt, card.md) written by
``xanestrack train ...``.
"""
