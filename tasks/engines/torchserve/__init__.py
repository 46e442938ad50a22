"""TorchServe behind the engine seam: engine.py wraps the stages' own TorchServe code, which stays where it is."""
