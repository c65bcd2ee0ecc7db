"""Data for training and evaluation: sample and calibration photographs, training patches,
evaluation sets, real-world degradations, the Debian photo corpus.
"""
