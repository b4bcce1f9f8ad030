"""inferforge CrossGuard policy pack.

The policies live in one module per concern (exposure, encryption, identity, quotas, resilience,
tagging, edge, workloads); :mod:`policies.pack` lists them all. Every module imports its siblings
relatively, so the package works under any import name: ``policies`` when imported from the
repository root (tests, the offline ``plan``), and the fixed alias that ``__main__.py`` registers
when the Pulumi CLI runs the pack with this directory as its working directory.
"""
