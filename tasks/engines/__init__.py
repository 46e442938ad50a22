"""Serving engines behind one seam (seam.py): TorchServe (torchserve/) and Ray Serve (ray/), each in its own folder."""
