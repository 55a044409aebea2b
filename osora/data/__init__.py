"""The data pyramid's operators (RECIPE §1): synthetic demo set, ingest, preprocessing filters,
shots and clips, scores, captions, pyramid levels.

Nothing is imported here, so `import osora.data` stays light; import the module you need.
"""
