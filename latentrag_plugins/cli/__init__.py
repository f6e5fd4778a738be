"""The ``latentrag`` command line."""
