"""Evaluation: AE reconstruction metrics, prompt following and motion control of generated
videos, VBench (suite, external tool, summary scores), human-preference studies."""
