"""xgboost BDTs (BDT1, BDT2, BDTc, BDTh), k-fold training and the eta efficiency transform.

Not built yet (issues 4 and 5).
"""
