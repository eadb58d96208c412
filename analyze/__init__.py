"""Attention analysis: capture, aggregation and figures (see the issues that build it)."""
