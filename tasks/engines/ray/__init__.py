"""Ray Serve as a serving engine (the extra [ray]: ./setup.sh --ray); engine.py lists the steps, a module each."""
