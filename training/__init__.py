"""Dataset preparation and training for the breast-cancer diagnosis model."""
