"""Tests of megatron_tsp. Importing the package first applies its megatron-core adaptations."""

import megatron_tsp  # noqa: F401
