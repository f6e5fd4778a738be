"""The demo: a base LM the project pretrains itself, and the shipped demo checkpoints."""
