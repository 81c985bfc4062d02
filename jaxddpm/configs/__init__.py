"""Shipped configurations; each module has ``get_config() -> ml_collections.ConfigDict``."""
