"""Stage 4: plain-PyTorch training and cross-validation.

loop (train_step, evaluate, fit: one model), cv (the folds of one experiment),
final_fit (one model on all the data), optim, checkpoint (finished folds kept
for resume), results (FoldResult, CVResult), metrics, callbacks (the hooks
tracking, sweeps and progress display plug into).
"""
