"""Datasets: sklearn digits, image folders, prompt CSVs, and self-generated forget/remain sets."""
