"""Model-agnostic SFR-on: Fisher diagonals, saliency masks, adaptive losses and the online loop.

The core never imports a family: a family hands it a per-sample loss and batch iterables.
"""
