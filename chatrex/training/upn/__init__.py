"""UPN training: Hungarian matching, set losses, contrastive denoising queries, the training task."""
