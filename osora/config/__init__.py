"""One config schema: each file in params/ is validated by one model in this package.

    from osora.config import load_settings
    settings = load_settings()            # params/*.yaml (the tiny profile) + OSORA_* overrides
    settings = load_settings("paper")     # + params/profiles/paper/*.yaml
"""

from osora.config.settings import DEFAULT_PROFILE, SECTIONS, ConfigError, Settings, load_settings

__all__ = ["DEFAULT_PROFILE", "SECTIONS", "ConfigError", "Settings", "load_settings"]
