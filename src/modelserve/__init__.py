"""modelserve-node: the platform's own Python code.

Everything the project runs (the TorchServe handler, the drift consumer, the host tools,
the load profile, the benchmark) lives in this one package, installed in the controller's
venv (`make venv`) and in the images that need it.
"""
