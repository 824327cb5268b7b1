"""Test harnesses that drive the real CLI and runner with stand-in stages."""
