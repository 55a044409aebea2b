"""Blinded pairwise human-preference studies (docs/recipe.md §7, the paper's Figure 1).

build → serve → analyze: `build_study` pairs index-0 samples of every model on the same prompts
into blinded items; `serve` shows them to raters on a local web page and stores each answer
durably; `analyze` turns the answers back into per-model win/tie/loss rates with bootstrap CIs,
Fleiss' kappa and the Figure 1 chart.
"""
