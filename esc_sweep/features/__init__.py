"""Stage 2: clips -> device-resident spectrograms -> augmented batches.

transforms (log-mel, MFCC, STFT front ends), store (the device-resident
spectrograms a batch index reads), cache (computed features kept on disk for
CPU runs), augment (batched gain, shift, crop, SpecAugment, mixup on the device),
bc (between-class learning), and the front ends a model holds: frontends (which kind
keeps what where), pcen, leaf.
"""
