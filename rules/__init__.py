"""Rules, one module each. Installed as `auditor.rules` (see setup.cfg `package_dir`).

Numbering policy: a three-letter prefix per category (PRE preprocessing, BNS batchnorm, INF
inference-mutation, HED head, LRT learning-rate, SEC security, DET determinism, LOD loading,
USE usage), then `0xx` for static rules, `1xx` for dynamic probes, `9xx` for experimental
rules that are off by default. Retired codes stay reserved and are never reused.
"""
