"""Training: the engine shared by the quadratic and SQuAD tasks (see the issues that build it)."""
