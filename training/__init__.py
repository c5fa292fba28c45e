"""Training an Engram model: tables sharded by rows over torch.distributed processes."""
