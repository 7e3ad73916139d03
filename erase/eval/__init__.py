"""Evaluation: classifier accuracy on generated images, FID/KID (torch-fidelity), NudeNet, reports."""
