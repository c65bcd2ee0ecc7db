"""The networks: merge math, training-form blocks, the BN phase switch, the training (`RepNet`) and
deployed (`PlainSR`) networks, and the check that a merge computes its training form.
"""
