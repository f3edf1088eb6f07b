"""SegEarth-R1 in plain PyTorch."""
