"""The data pyramid's operators (docs/recipe.md §1): synthetic demo set, ingest, preprocessing,
shots and clips, scores, captions, pyramid levels.

Nothing is imported here, so `import osora.data` stays light; import the module you need.
"""
