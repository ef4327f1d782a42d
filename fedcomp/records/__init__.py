"""What a run records: the transfer meter, results files, plots, checkpoints, saved models, trackers
and provenance.
"""
