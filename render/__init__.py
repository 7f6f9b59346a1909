"""Rendering of layouts with PyVista (numpy in, pictures out; never jax)."""
