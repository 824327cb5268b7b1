"""The benchmark client: exact-length prompts, a streaming closed-loop load generator, aiperf-style metrics."""
