"""xgboost BDTs (BDT1, BDT2, BDTc, BDTh), k-fold training and the eta efficiency transform.

``bdt`` holds the k-fold model and its JSON files, ``train`` and ``hta`` the ITA and HTA
trainings, ``eta`` the transform.
"""
